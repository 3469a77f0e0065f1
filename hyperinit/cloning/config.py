"""Cloning at the model-config level: destination configs and one-call clones.

    dst_cfg = clone_config(cfg, factors_for(2))
    big, dst_cfg = clone_model(params, cfg, factors_for(2), rng=jax.random.key(0))

The parameter work is `plan_lib.make_plan` / `widen.apply_plan`, driven by the
annotations only; this module adds what a model config knows: the logit scale
(for the query correction), where an untied readout lives, and the destination
fields (sizes, kv heads, `rope_tile`, `tie_embeddings`).  It also checks that
the planned destination tree equals `models.param_specs(dst_cfg)` leaf by leaf,
so a clone can never silently disagree with the model that will run it.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

from hyperinit import models
from hyperinit import spec as spec_lib
from hyperinit.cloning import factors as factors_lib
from hyperinit.cloning import plan as plan_lib
from hyperinit.cloning import widen
from hyperinit.models.config import ModelConfig, TransformerConfig


def source_sizes(cfg: ModelConfig) -> dict[str, int]:
  """Size of every logical axis of a config's parameter tree."""
  return spec_lib.axis_sizes(models.param_shapes(cfg), models.param_specs(cfg))


def clone_config(cfg: ModelConfig, factors: Mapping[str, Any], *, kv_rule: str = 'auto',
                 tie: str = 'keep') -> ModelConfig:
  """The destination config of a clone of `cfg` by `factors`.

  Sizes are multiplied per logical axis (embed -> embed_dim, mlp -> mlp_dim,
  heads -> num_heads, kv_heads -> num_kv_heads, head_dim -> head_dim).  What the
  clone did is recorded in fields the model reads:
    * `rope_tile *= n_head_dim` under RoPE: each head becomes n chunks rotated
      with the source's frequencies.  Such a model is NOT a standard member of
      its family (a plain HF checkpoint would rotate the wide head with other
      frequencies); `nonstandard_reasons` says so and the HF export refuses it.
    * `head_dim` is set explicitly when embed_dim / num_heads no longer equals it.
    * `tie_embeddings=False` for tie='untie'.
  Multipliers (attn_mult, embed_mult, logits_mult, residual_mult) are kept:
  they are part of the function being preserved.

  Raises:
    ValueError naming the axis or option (see `factors.resolve_factors`), and for
    a tied model with a non-parametric final norm unless tie='untie'.
  """
  if tie not in plan_lib.TIE_MODES:
    raise ValueError(f'tie={tie!r}: expected one of {plan_lib.TIE_MODES}')
  f = factors_lib.resolve_factors(factors, source_sizes(cfg), kv_rule)
  fe, fm, fh = f.get('embed', 1), f.get('mlp', 1), f.get('heads', 1)
  fkv, fhd = f.get('kv_heads', 1), f.get('head_dim', 1)
  embed, heads, d_head = cfg.embed_dim * fe, cfg.num_heads * fh, cfg.d_head * fhd
  kw: dict[str, Any] = dict(embed_dim=embed, mlp_dim=cfg.mlp_dim * fm, num_heads=heads)
  if cfg.num_kv_heads is not None:
    kw['num_kv_heads'] = cfg.n_kv_heads * fkv
  elif fkv != fh:  # MHA written as None: kv heads = heads unless they diverge
    kw['num_kv_heads'] = cfg.n_kv_heads * fkv
  standard_head = cfg.head_dim is None and embed % heads == 0 and embed // heads == d_head
  kw['head_dim'] = None if standard_head else d_head
  if cfg.position == 'rope' and fhd > 1:
    kw['rope_tile'] = cfg.rope_tile * fhd
  tied = isinstance(cfg, TransformerConfig) and cfg.tie_embeddings
  if tied and fe > 1:
    if tie == 'untie':
      kw['tie_embeddings'] = False
    elif cfg.norm == 'layernorm_nonparam':
      raise ValueError(
          f'{cfg.family} model with tied embeddings and a non-parametric final norm: widening '
          f'embed {fe}x cannot keep the tie exactly (the 1/{fe} must go into the final norm '
          f"gain, which does not exist). Pass tie='untie' to give the clone a separate readout "
          f'lm_head = E^T/{fe} (tie_embeddings=False in the destination)')
  return cfg.replace(**kw)


def nonstandard_reasons(cfg: ModelConfig) -> list[str]:
  """What a clone did that no standard model of any family does (empty: nothing).

  Which fields a given Hugging Face family can express (an explicit head_dim, GQA, ...)
  is `interop.check_exportable`'s to say; this names only what the clone itself made
  non-standard, in words.
  """
  out = []
  if cfg.position == 'rope' and cfg.rope_tile > 1:
    out.append(f'rope_tile={cfg.rope_tile}: each head is {cfg.rope_tile} chunks rotated with the '
               f'frequencies of a {cfg.d_head // cfg.rope_tile}-wide head (a head_dim clone under '
               f'RoPE); a standard checkpoint of this family would rotate the whole head with '
               f'other frequencies, so it cannot be exported as one')
  return out


def plan_model(cfg: ModelConfig, factors: Mapping[str, Any], variant: str = 'noisy_symmetric',
               snr_db: float = 10.0, *, kv_rule: str = 'auto', tie: str = 'keep',
               noise_dist: str = 'irwin_hall') -> tuple[plan_lib.ClonePlan, ModelConfig]:
  """(plan, dst_cfg) for cloning a model of config `cfg`.

  The plan is checked against `models.param_specs(dst_cfg)` /
  `models.param_shapes(dst_cfg)`: same leaves, annotations and shapes.
  """
  dst_cfg = clone_config(cfg, factors, kv_rule=kv_rule, tie=tie)
  specs, shapes = models.param_specs(cfg), models.param_shapes(cfg)
  dst_specs = spec_lib.flatten(models.param_specs(dst_cfg), is_leaf=spec_lib.is_spec)
  src_paths = set(spec_lib.flatten(specs, is_leaf=spec_lib.is_spec))
  new_readouts = [p for p, s in dst_specs.items() if p not in src_paths and s.role == 'readout']
  plan = plan_lib.make_plan(specs, shapes, factors, variant, snr_db, attn_scale=cfg.attn_scale,
                         kv_rule=kv_rule, tie=tie,
                         readout_path=new_readouts[0] if new_readouts else None,
                         noise_dist=noise_dist)
  _check_against_model(plan, dst_cfg, dst_specs)
  return plan, dst_cfg


def _check_against_model(plan: plan_lib.ClonePlan, dst_cfg: ModelConfig,
                         dst_specs: Mapping[str, spec_lib.ParamSpec]) -> None:
  dst_shapes = spec_lib.flatten(models.param_shapes(dst_cfg))
  got = {lp.path: lp for lp in plan.leaves}
  if set(got) != set(dst_specs):
    raise ValueError(f'clone plan and destination model disagree on leaves: plan only '
                     f'{sorted(set(got) - set(dst_specs))}, model only '
                     f'{sorted(set(dst_specs) - set(got))}')
  for path, s in dst_specs.items():
    lp = got[path]
    if lp.spec != s or tuple(lp.dst_shape) != tuple(dst_shapes[path].shape):
      raise ValueError(f'clone plan builds {path!r} as {lp.dst_shape} {lp.spec}, but the '
                       f'destination model declares {dst_shapes[path].shape} {s}')


def clone_model(params: Any, cfg: ModelConfig, factors: Mapping[str, Any],
                variant: str = 'noisy_symmetric', rng: jax.Array | int | None = None,
                snr_db: float = 10.0, *, kv_rule: str = 'auto', tie: str = 'keep',
                noise_dist: str = 'irwin_hall', out_shardings: Any = None,
                mesh: jax.sharding.Mesh | None = None, rules: Any = None,
                jit: bool = True) -> tuple[dict[str, Any], ModelConfig]:
  """Clones a model's params; returns (dst params, dst config).

  Args:
    params: params of a model built from `cfg` (nested dict, may be sharded).
    cfg: source config.
    factors: {axis: n}; `factors_for(n)` widens embed, mlp and heads.
    variant, rng, snr_db: see `widen.clone`.
    kv_rule, tie, noise_dist: see `plan_lib.make_plan`.
    out_shardings / mesh + rules: destination layout (see `widen.clone_fn`).
    jit: compile the clone (default); False runs it op by op.
  """
  plan, dst_cfg = plan_model(cfg, factors, variant, snr_db, kv_rule=kv_rule, tie=tie,
                             noise_dist=noise_dist)
  if jit:
    out = widen.clone_fn(plan, out_shardings=out_shardings, mesh=mesh, rules=rules)(params, rng)
  else:
    out = widen.apply_plan(plan, params, rng)
  return out, dst_cfg


def describe(plan: plan_lib.ClonePlan, src_cfg: ModelConfig | None = None,
             dst_cfg: ModelConfig | None = None) -> str:
  """A few human-readable lines on what a clone did."""
  lines = [f'variant {plan.variant}' + (f' ({plan.noise_dist} noise, snr {plan.snr_db:g} dB)'
                                         if plan.noisy else ''),
           'factors ' + ', '.join(f'{a}x{n}' for a, n in plan.factors if n > 1)]
  lines += list(plan.notes)
  if src_cfg is not None and dst_cfg is not None:
    lines.append(f'params {models.count_params(src_cfg):,} -> {models.count_params(dst_cfg):,}')
    lines += [f'non-standard: {r}' for r in nonstandard_reasons(dst_cfg)]
  return '\n'.join(lines)


__all__ = ['clone_config', 'clone_model', 'describe', 'nonstandard_reasons', 'plan_model',
           'source_sizes']
