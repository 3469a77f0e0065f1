"""Compile the non-training jobs for a TPU slice: the sharded clone (and its HLO check).

    report = aot_jobs.compile_clone(config, 'v5e:4x4')   # config.clone: source + factors
    report['no_full_gather'], report['per_device_bytes']

`config` is a trainer config whose model is the clone's destination and whose
`clone` field names the source (`configs/clone_paper.py`); the mesh and rules
are the trainer's (`config.mesh`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp

from hyperinit import cloning, models, sharding
from hyperinit import spec as spec_lib
from hyperinit.train import aot, roofline

FACTOR_AXES = ('embed', 'mlp', 'heads', 'head_dim', 'kv_heads')


def source_config(config: Any) -> models.ModelConfig:
  """The clone's source model: config.clone.source (preset name + size overrides)."""
  src = config.clone.source
  over = {k: v for k, v in src.items() if k != 'name' and v is not None}
  return models.get_config(src.name, **over)


def clone_factors(config: Any) -> dict[str, int]:
  return {a: int(config.clone[a]) for a in FACTOR_AXES if config.clone.get(a)}


def _mesh_and_rules(config: Any, devices: list[Any], cfg: models.ModelConfig):
  mesh = sharding.make_mesh({k: int(config.mesh[k]) for k in sharding.MESH_AXES}, devices)
  specs, shapes = models.param_specs(cfg), models.param_shapes(cfg)
  rules = sharding.fit_rules(sharding.make_rules(config.mesh.get('rules')), shapes, specs, mesh)
  return mesh, rules, specs, shapes


def compile_clone(config: Any, topology_name: str) -> dict[str, Any]:
  """Compiles `cloning.clone_fn(plan, mesh=..., rules=...)` source -> destination.

  The source params arrive sharded by the trainer's rules on the same mesh;
  the destination leaves are laid out by the rules fitted to the destination.

  Returns:
    the report (see `aot.compile_train`) plus src/dst params, the largest
    per-device destination shard and the largest array in the compiled HLO,
    and `no_full_gather`: no device materialises more elements than the
    largest destination shard (so no whole sharded destination leaf).
  """
  devices, kind = aot.topology(topology_name)
  src_cfg = source_config(config)
  plan, dst_cfg = cloning.plan_model(src_cfg, clone_factors(config),
                                     config.clone.get('variant', 'noisy_symmetric'),
                                     float(config.clone.get('snr_db', 10.0)),
                                     tie=config.clone.get('tie', 'keep'))
  mesh, src_rules, src_specs, src_shapes = _mesh_and_rules(config, devices, src_cfg)
  _, dst_rules, _, dst_shapes = _mesh_and_rules(config, devices, dst_cfg)
  src_sh = sharding.tree_shardings(src_shapes, src_specs, mesh, src_rules)
  dtype = jnp.dtype(config.model.get('param_dtype') or 'float32')
  src = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype, sharding=sh),
                     src_shapes, src_sh)
  rng = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                             sharding=sharding.replicated(mesh))
  fn = cloning.clone_fn(plan, mesh=mesh, rules=dst_rules)
  head = dict(job='clone', topology=topology_name, chip=kind, chips=len(devices),
              mesh=dict(mesh.shape), factors=clone_factors(config),
              src_params=spec_lib.count(src_shapes), params=spec_lib.count(dst_shapes),
              dst_model=dict(num_layers=dst_cfg.num_layers, embed_dim=dst_cfg.embed_dim,
                             num_heads=dst_cfg.num_heads, d_head=dst_cfg.d_head,
                             mlp_dim=dst_cfg.mlp_dim))
  head['src_model'] = dict(preset=config.clone.source.name, num_layers=src_cfg.num_layers,
                           embed_dim=src_cfg.embed_dim, num_heads=src_cfg.num_heads,
                           mlp_dim=src_cfg.mlp_dim)
  try:
    _, facts = aot.compile_fn(fn, (src, rng), job='clone', chip_kind=kind,
                              num_devices=len(devices), context=contextlib.nullcontext)
  except aot.DoesNotFit as e:
    e.report.update(head)
    raise
  hlo = facts.pop('_hlo')
  dst_sh = cloning.dst_shardings(plan, mesh, dst_rules)
  shards = [(int(jnp.prod(jnp.array(sh.shard_shape(s.shape)))), s.shape)
            for s, sh in zip(jax.tree.leaves(dst_shapes), jax.tree.leaves(dst_sh))]
  biggest_shard = max(n for n, _ in shards)
  n_max, shape_max = roofline.largest_array(hlo)
  return dict(head, **facts, largest_dst_shard_elements=biggest_shard,
              largest_hlo_array=dict(elements=n_max, shape=shape_max),
              no_full_gather=n_max <= biggest_shard)
