"""GHN meta-training on a device mesh: the meta-state's shardings and the jitted steps.

    mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})        # targets over data, rows over fsdp
    rules = sharding.make_rules()                            # logical axes -> mesh axes
    state = init_meta_state(ghn_cfg, meta_cfg, jax.random.key(0), mesh, rules)
    step = make_meta_step(ghn_cfg, meta_cfg, mesh, rules)    # jitted, in/out shardings
    state, metrics = step(state, to_global(graphs, replicated), to_global(batch, rows), key, group)
    # ahead of time, nothing allocated (batch: ShapeDtypeStructs with row_sharding(mesh)):
    step.lower(abstract_meta_state(ghn_cfg, meta_cfg, mesh, rules), graphs, batch, key,
               group).compile()

The GHN's params (and EMA, and Adam's moments, which follow them through
`step.state_shardings`) are laid out by `ghn.param_specs` and the trainer's rules:
replicated on a data-parallel mesh, ZeRO-split over 'fsdp' where a leaf divides.  The
meta-batch is split by `logah.meta_mesh` (targets over 'data', rows over 'fsdp').  Each
jitted step is built per run: its compiled programs (one per target group) are freed with
it, so a process that trains several GHNs holds only the current one's.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hyperinit import sharding
from hyperinit.logah import ghn as ghn_lib, meta, meta_mesh
from hyperinit.train import step as step_lib

# XLA options for config.fast_compile: far shorter CPU compiles of the many small per-group
# programs (measured ~2.5x), at the price of slower steps; for smoke runs and tests.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def param_shardings(ghn_cfg: ghn_lib.GHNConfig, mesh: Mesh,
                    rules: sharding.Rules = sharding.DEFAULT_RULES) -> dict:
  """NamedSharding tree of the GHN's params from their specs (`ghn.param_specs`)."""
  return sharding.tree_shardings(ghn_lib.param_shapes(ghn_cfg), ghn_lib.param_specs(ghn_cfg),
                                 mesh, rules)


def _train_state(ghn_cfg: ghn_lib.GHNConfig, meta_cfg: meta.MetaConfig, mesh: Mesh,
                 rules: sharding.Rules) -> step_lib.TrainState:
  """The trainer's abstract TrainState (with shardings) of the GHN's params and optimizer."""
  tx, shapes = meta.make_optimizer(meta_cfg), ghn_lib.param_shapes(ghn_cfg)
  shardings = step_lib.state_shardings(param_shardings(ghn_cfg, mesh, rules), tx, mesh, shapes)
  return step_lib.abstract_state(tx, shapes, shardings)


def abstract_meta_state(ghn_cfg: ghn_lib.GHNConfig, meta_cfg: meta.MetaConfig, mesh: Mesh,
                        rules: sharding.Rules = sharding.DEFAULT_RULES) -> dict[str, Any]:
  """ShapeDtypeStructs (with shardings) of `meta.init_state`'s tree {'step', 'params', 'ema',
  'opt_state'}: the Checkpointer's restore target and a `.lower()` argument."""
  ts = _train_state(ghn_cfg, meta_cfg, mesh, rules)
  return {'step': ts.step, 'params': ts.params, 'ema': ts.params, 'opt_state': ts.opt_state}


def to_items(state: dict[str, Any]) -> dict[str, Any]:
  """The meta-state as Checkpointer items: params, opt_state, ema, train {'step'} (orbax saves
  no bare scalar item; params and opt_state are where every params reader looks)."""
  return {'params': state['params'], 'opt_state': state['opt_state'], 'ema': state['ema'],
          'train': {'step': state['step']}}


def from_items(items: dict[str, Any]) -> dict[str, Any]:
  return {'step': items['train']['step'], 'params': items['params'], 'ema': items['ema'],
          'opt_state': items['opt_state']}


def meta_state_shardings(ghn_cfg: ghn_lib.GHNConfig, meta_cfg: meta.MetaConfig, mesh: Mesh,
                         rules: sharding.Rules = sharding.DEFAULT_RULES) -> dict[str, Any]:
  return jax.tree.map(lambda s: s.sharding, abstract_meta_state(ghn_cfg, meta_cfg, mesh, rules))


def init_meta_state(ghn_cfg: ghn_lib.GHNConfig, meta_cfg: meta.MetaConfig, rng: jax.Array,
                    mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES) -> dict[str, Any]:
  """`meta.init_state` initialised directly into its shards (same values as on one device)."""
  return sharding.sharded_init(lambda k: meta.init_state(ghn_cfg, meta_cfg, k), rng,
                               meta_state_shardings(ghn_cfg, meta_cfg, mesh, rules))


def row_sharding(mesh: Mesh) -> NamedSharding:
  """A data batch's sharding: rows [B, ...] over the meta-step's row axis."""
  return NamedSharding(mesh, PartitionSpec(meta_mesh.ROW_AXIS))


def to_global(tree: Any, sharding_: NamedSharding) -> Any:
  """Host arrays that every process holds whole -> global arrays laid out by `sharding_`
  (each process fills its own devices' shards; works on one or many processes)."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding_, lambda idx: x[idx])
  return jax.tree.map(put, tree)


def make_meta_step(ghn_cfg: ghn_lib.GHNConfig, meta_cfg: meta.MetaConfig, mesh: Mesh,
                   rules: sharding.Rules = sharding.DEFAULT_RULES, *,
                   compiler_options: dict[str, Any] | None = None) -> Callable[..., Any]:
  """The jitted meta-step `(state, graphs, batch, rng, targets) -> (state, metrics)` on `mesh`.

  Args:
    ghn_cfg, meta_cfg: the GHN and meta-training configs.
    mesh: a ('data', 'fsdp', 'tensor') mesh with tensor = 1 (`sharding.make_mesh`).
    rules: logical-axis rules for the GHN's params (`sharding.make_rules`).
    compiler_options: XLA options for every compile (e.g. FAST_COMPILE).

  The returned function takes the meta-state (`init_meta_state`; donated), the group's padded
  graphs (replicated), the data batch (rows over 'fsdp': `row_sharding`), this step's key
  (replicated; read with meta_cfg.noise or permute_channels) and the target group (a tuple of
  model configs, static and positional: one compile per group, cached on this function).  Metrics are replicated: 'loss',
  'task_loss', 'accuracy', 'grad_norm', 'task_losses' [T], 'accuracies' [T].
  """
  meta_mesh.check_mesh(mesh)
  shardings = meta_state_shardings(ghn_cfg, meta_cfg, mesh, rules)
  rep = sharding.replicated(mesh)

  def step(state, graphs, batch, rng, targets):
    (_, metrics), grads = meta_mesh.split_grads(state['params'], graphs, batch, rng, mesh=mesh,
                                                ghn_cfg=ghn_cfg, meta_cfg=meta_cfg,
                                                targets=targets)
    grads = jax.lax.with_sharding_constraint(grads, shardings['params'])
    return meta.apply_update(state, grads, meta_cfg), metrics

  return jax.jit(step, in_shardings=(shardings, rep, row_sharding(mesh), rep),
                 out_shardings=(shardings, rep), static_argnums=4, donate_argnums=0,
                 compiler_options=compiler_options)


def make_eval_step(ghn_cfg: ghn_lib.GHNConfig, mesh: Mesh,
                   rules: sharding.Rules = sharding.DEFAULT_RULES, *,
                   compiler_options: dict[str, Any] | None = None) -> Callable[..., Any]:
  """Jitted `(params, graphs, batch, targets) -> (task loss [T], accuracy [T])` on `mesh`
  (targets static and positional, as `make_meta_step`'s)."""
  meta_mesh.check_mesh(mesh)
  rep = sharding.replicated(mesh)

  def run(params, graphs, batch, targets):
    return meta_mesh.split_eval(params, graphs, batch, mesh=mesh, ghn_cfg=ghn_cfg,
                                targets=targets)

  return jax.jit(run, in_shardings=(param_shardings(ghn_cfg, mesh, rules), rep,
                                    row_sharding(mesh)),
                 out_shardings=rep, static_argnums=3, compiler_options=compiler_options)
