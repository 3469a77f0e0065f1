"""HyperCloning of an annotated parameter pytree: the per-leaf block construction.

Every widened activation of the destination is the block stack
`x_D = [x, ..., x]` (n copies, not interleaved).  A leaf is viewed as a grid of
blocks, one block per combination of its widened axes' copies; each block has
the source leaf's shape.  Writing r for the index over the widened fan-out axes
and c for the index over the widened fan-in axes, the destination computes
`y_D[r] = sum_c B[r, c] x`, so it is function preserving iff for every r the
blocks of row r sum to the source weight W.  The variants choose B:

  symmetric        B[r, c] = W / N_in                      (N_in = #fan-in blocks)
  diagonal         B[r, c] = W / M if c matches r else 0   (see `_block_weights`)
  noisy_*          the above + eta[r, c] with sum_c eta[r, c] = 0

Fan-out-only leaves (N_in = 1) are tiled, so biases, norm gains and embedding
tables are tiled and never divided.  A leaf-wide `scale` handles the two
special cases: the query projection under head_dim growth (n^-1/2 with a
1/sqrt(d) logit scale) and a tied embedding's final norm (1/n_embed).

Everything here is driven by the `ParamSpec` annotations: axis names pick the
factors, fan_in picks rows vs columns, and roles ('query', 'final_norm',
'tied_embedding') pick the scales.  No parameter names are consulted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hyperinit import sharding
from hyperinit import spec as spec_lib
from hyperinit.cloning import noise as noise_lib
from hyperinit.cloning.plan import ClonePlan, LeafPlan, make_plan

# --- block construction -------------------------------------------------------------

def _block_weights(lp: LeafPlan, diagonal: bool) -> tuple[np.ndarray, int]:
  """Per-block weight (shape: the leaf's factors) and M, the nonzero blocks per row.

  Symmetric: every block of a row gets 1/N_in.  Diagonal, generalised to any
  set of widened axes: let k be the row-major index of the block over the
  widened fan-out axes (N_out of them).  A fan-in block c = (c_i) matches row k
  iff c_i = k (mod g_i) with g_i = gcd(n_i, N_out) for every widened fan-in
  axis i; matching blocks get 1/M (M = prod n_i / g_i matches per row), others
  0.  With equal factors this is the block diagonal [[W, 0], [0, W]]; with no
  widened fan-out axis (a readout) it reduces to the symmetric W/n; several
  fan-in axes (attention out kernel (heads, head_dim, embed)) are matched
  jointly, so copy k of the output reads only copy k of every input axis.
  """
  f = lp.factors
  w_in = lp.widened_in
  if not w_in:
    return np.ones(f, np.float64), 1
  if not diagonal or not lp.widened_out:
    return np.full(f, 1.0 / lp.n_in), lp.n_in
  n_out = int(math.prod(f[i] for i in lp.widened_out))
  g = {i: math.gcd(f[i], n_out) for i in w_in}
  m = int(math.prod(f[i] // g[i] for i in w_in))
  idx = np.indices(f)
  k = np.ravel_multi_index([idx[i] for i in lp.widened_out], [f[i] for i in lp.widened_out])
  match = np.ones(f, bool)
  for i in w_in:
    match &= (idx[i] % g[i]) == (k % g[i])
  return match / m, m


def needs_noise(lp: LeafPlan, variant: str) -> bool:
  """Whether the leaf gets symmetry-breaking noise: a noisy variant and a widened fan-in."""
  return variant.startswith('noisy') and lp.n_in > 1


def noise_draws(lp: LeafPlan) -> int:
  """Independent draws per row: n_j - 1 for the first widened fan-in axis j."""
  return lp.factors[lp.widened_in[0]] - 1


def build_leaf(w: jax.Array, lp: LeafPlan, variant: str, snr_db: float = 0.0,
               seeds: jax.Array | None = None, noise_dist: str = 'irwin_hall') -> jax.Array:
  """The destination leaf `lp.dst_shape` from the source leaf `lp.src_shape`.

  One compiled program per (shape, factors, scale, variant): the plan enters jit as a
  static argument without its path, so the layers of a model, and repeated clones,
  share compilations; under an outer jit (`clone_fn`) the call is inlined.

  Args:
    w: the source leaf, shape `lp.src_shape`.
    lp: its `LeafPlan`.
    variant, snr_db, noise_dist: see `plan.make_plan`.
    seeds: uint32 [n_j - 1, 2] from `noise.leaf_seeds`; needed when `needs_noise`.
  """
  if needs_noise(lp, variant) and seeds is None:
    raise ValueError(f'variant {variant!r} needs noise seeds for leaf {lp.path!r} '
                     f'(noise.leaf_seeds)')
  return _build_leaf(w, seeds, dataclasses.replace(lp, path='', src=''), variant,
                     float(snr_db), noise_dist)


@functools.partial(jax.jit, static_argnames=('lp', 'variant', 'snr_db', 'noise_dist'))
def _build_leaf(w, seeds, lp: LeafPlan, variant: str, snr_db: float, noise_dist: str):
  if lp.perm is not None:
    w = jnp.transpose(w, lp.perm)
  if lp.is_copy:
    return w
  dtype = w.dtype
  cdt = jnp.promote_types(dtype, jnp.float32)
  f = lp.factors
  xshape, bshape, mshape = [], [], []
  for fi, si in zip(f, lp.in_shape):
    xshape += [1, si] if fi > 1 else [si]
    bshape += [fi, si] if fi > 1 else [si]
    mshape += [fi, 1] if fi > 1 else [1]
  x = w.astype(cdt).reshape(xshape)
  weights, m = _block_weights(lp, variant.endswith('diagonal'))
  if np.all(weights == weights.flat[0]):
    y = jnp.broadcast_to(x, bshape) * jnp.asarray(weights.flat[0] * lp.scale, cdt)
  else:
    y = x * jnp.asarray(weights.reshape(mshape) * lp.scale, cdt)
  if needs_noise(lp, variant):
    y = y + noise_lib.zero_sum_noise(w.astype(cdt), lp, m, snr_db, noise_dist, seeds, bshape, cdt)
  return y.astype(dtype).reshape(lp.dst_shape)


def apply_plan(plan: ClonePlan, params: Any, rng: jax.Array | None = None) -> dict[str, Any]:
  """Builds the destination params (nested dict) from source params.

  Jit-able (see `clone_fn`).  Called eagerly, each leaf runs through one
  compiled `build_leaf` per shape and factors (not per path).
  """
  flat = spec_lib.flatten(params)
  if plan.noisy and rng is None:
    raise ValueError(f'variant {plan.variant!r} needs an rng key (e.g. jax.random.key(0))')
  base = noise_lib.base_seed(rng) if plan.noisy else None
  out = {}
  for lp in plan.leaves:
    if lp.src not in flat:
      raise ValueError(f'source leaf {lp.src!r} is missing from the params')
    w = flat[lp.src]
    if tuple(np.shape(w)) != lp.src_shape:
      raise ValueError(f'leaf {lp.src!r} has shape {np.shape(w)}; the plan was made for '
                       f'{lp.src_shape}')
    seeds = None
    if needs_noise(lp, plan.variant):
      seeds = noise_lib.leaf_seeds(base, lp.path, noise_draws(lp))
    out[lp.path] = build_leaf(w, lp, plan.variant, plan.snr_db, seeds, plan.noise_dist)
  return spec_lib.unflatten(out)


def clone(params: Any, specs: Any, factors: Mapping[str, Any], variant: str = 'noisy_symmetric',
          rng: jax.Array | None = None, snr_db: float = 10.0, **plan_kw) -> dict[str, Any]:
  """Function-preserving widening of `params` (nested dict) by `factors`.

  Args:
    params: source params; any nested-dict pytree matching `specs`.
    specs: `ParamSpec` tree (`models.param_specs(cfg)`).
    factors: {logical axis: integer factor}, e.g. {'embed': 2, 'mlp': 2,
      'heads': 2} or `factors_for(2, 'head_dim')`.
    variant: 'symmetric' | 'diagonal' | 'noisy_symmetric' | 'noisy_diagonal'.
      A symmetric clone trained deterministically stays symmetric forever
      (its extra width is wasted), hence the noisy default.
    rng: PRNG key (or int seed); needed by the noisy variants.
    snr_db: noise power relative to each block's signal, in dB (paper: 10).
    **plan_kw: attn_scale, kv_rule, tie, readout_path, noise_dist (see `make_plan`).

  Returns:
    Destination params; every leaf's widened axes are `factors` times larger.
  """
  plan = make_plan(specs, params, factors, variant, snr_db, **plan_kw)
  return apply_plan(plan, params, rng)


def dst_shardings(plan: ClonePlan, mesh: jax.sharding.Mesh, rules: Any) -> Any:
  """NamedShardings of the destination per logical-axis `rules` (`hyperinit.sharding`'s way)."""
  shapes = spec_lib.unflatten({lp.path: jax.ShapeDtypeStruct(lp.dst_shape, jnp.float32)
                               for lp in plan.leaves})
  return sharding.tree_shardings(shapes, plan.dst_specs, mesh, rules)


def clone_fn(plan: ClonePlan, *, out_shardings: Any = None, mesh: jax.sharding.Mesh | None = None,
             rules: Any = None, donate: bool = False):
  """A jitted `(params, rng) -> dst params` for `plan`.

  The destination is laid out per `out_shardings` (a tree of shardings matching
  `plan.dst_specs`), or per `rules` (Flax logical-axis rules, e.g. those of
  `hyperinit.sharding`) on `mesh`.  Under SPMD each device computes its own
  shard of every destination leaf from the source shards it needs; the
  destination is never assembled on one device, and the noise generator is
  counter-based, so the result does not depend on the sharding.
  """
  if out_shardings is None and mesh is not None:
    if rules is None:
      raise ValueError('clone_fn(mesh=...) needs rules (logical axis -> mesh axis)')
    out_shardings = dst_shardings(plan, mesh, rules)
  fn = lambda params, rng=None: apply_plan(plan, params, rng)
  return jax.jit(fn, out_shardings=out_shardings, donate_argnums=(0,) if donate else ())
