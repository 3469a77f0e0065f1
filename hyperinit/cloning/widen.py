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

from hyperinit import spec as spec_lib
from hyperinit.cloning import factors as factors_lib
from hyperinit.cloning import noise as noise_lib
from hyperinit.spec import ParamSpec

VARIANTS = ('symmetric', 'diagonal', 'noisy_symmetric', 'noisy_diagonal')
TIE_MODES = ('keep', 'untie')


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  """How one destination leaf is built from one source leaf.

  Attributes:
    path: destination path ('block_0/attn/query/kernel').
    src: source path (differs from `path` only for an untied readout).
    perm: transpose applied to the source leaf first (None: identity).
    spec: destination annotation.
    src_shape: shape of the source leaf (before `perm`).
    dst_shape: destination shape (the permuted source shape times `factors`).
    factors: factor per axis of the destination leaf.
    scale: leaf-wide multiplier (query n^-1/2, tied final norm 1/n).
  """
  path: str
  src: str
  perm: tuple[int, ...] | None
  spec: ParamSpec
  src_shape: tuple[int, ...]
  dst_shape: tuple[int, ...]
  factors: tuple[int, ...]
  scale: float = 1.0

  @property
  def in_shape(self) -> tuple[int, ...]:
    """The source shape after `perm`: one block of the destination."""
    if self.perm is None:
      return self.src_shape
    return tuple(self.src_shape[i] for i in self.perm)

  @property
  def widened_in(self) -> tuple[int, ...]:
    return tuple(i for i in self.spec.fan_in if self.factors[i] > 1)

  @property
  def widened_out(self) -> tuple[int, ...]:
    return tuple(i for i in self.spec.fan_out if self.factors[i] > 1)

  @property
  def n_in(self) -> int:
    return int(math.prod(self.factors[i] for i in self.widened_in))

  @property
  def n_blocks(self) -> int:
    return int(math.prod(self.factors))

  @property
  def is_copy(self) -> bool:
    return self.n_blocks == 1 and self.scale == 1.0 and self.perm is None


@dataclasses.dataclass(frozen=True)
class ClonePlan:
  """A static, hashable description of a clone (usable as a jit static).

  Build with `make_plan`; apply with `apply_plan` / `clone_fn`.  The optimizer
  state widening (`optim.py`) and the symmetry diagnostic read it too.
  """
  leaves: tuple[LeafPlan, ...]
  factors: tuple[tuple[str, int], ...]
  variant: str
  snr_db: float
  noise_dist: str = 'irwin_hall'
  notes: tuple[str, ...] = ()

  @property
  def factor_dict(self) -> dict[str, int]:
    return dict(self.factors)

  @property
  def noisy(self) -> bool:
    return self.variant.startswith('noisy')

  @property
  def dst_specs(self) -> dict[str, Any]:
    """Nested dict of destination `ParamSpec`s."""
    return spec_lib.unflatten({lp.path: lp.spec for lp in self.leaves})

  @property
  def dst_shapes(self) -> dict[str, Any]:
    """Nested dict of destination shapes (tuples)."""
    return spec_lib.unflatten({lp.path: lp.dst_shape for lp in self.leaves})

  def leaf(self, path: str) -> LeafPlan:
    for lp in self.leaves:
      if lp.path == path:
        return lp
    raise KeyError(f'no destination leaf {path!r} in this clone plan')


def make_plan(specs: Any, shapes: Any, factors: Mapping[str, Any], variant: str = 'noisy_symmetric',
              snr_db: float = 10.0, *, attn_scale: str = 'sqrt', kv_rule: str = 'auto',
              tie: str = 'keep', readout_path: str | None = None,
              noise_dist: str = 'irwin_hall') -> ClonePlan:
  """Plans a clone from the annotations and the source shapes.

  Args:
    specs: `ParamSpec` tree of the source.
    shapes: the source params (arrays, or anything with a `.shape`) in the same tree.
    factors: {logical axis: integer factor}, e.g. `factors_for(2)`.
    variant: one of `VARIANTS`.
    snr_db: signal-to-noise ratio of the noisy variants, in dB, relative to the
      power of each destination block's signal (per layer for scanned leaves).
    attn_scale: the model's attention logit scale, 'sqrt' (1/sqrt(d_head):
      queries are scaled by n^-1/2 under head_dim growth) or 'linear' (muP 1/d:
      no correction).
    kv_rule: GQA/MQA rule, see `factors.KV_RULES`.
    tie: with a tied embedding (role 'tied_embedding') and a widened embed axis,
      'keep' keeps the tie by dividing the final norm's gain and bias (role
      'final_norm') by n_embed; 'untie' adds a separate readout leaf at
      `readout_path` equal to E^T / n_embed and leaves the final norm alone
      (the only exact option with a non-parametric final norm, e.g. OLMo).
    readout_path: where the untied readout goes ((embed, vocab) kernel).
    noise_dist: 'irwin_hall' (fast, approximately Gaussian) or 'gaussian'
      (exact); see `noise.hash_noise`.

  Returns:
    A `ClonePlan`.

  Raises:
    ValueError naming the leaf / axis on any inconsistency.
  """
  if variant not in VARIANTS:
    raise ValueError(f'variant={variant!r}: expected one of {VARIANTS}')
  if tie not in TIE_MODES:
    raise ValueError(f'tie={tie!r}: expected one of {TIE_MODES}')
  if attn_scale not in ('sqrt', 'linear'):
    raise ValueError(f"attn_scale={attn_scale!r}: expected 'sqrt' or 'linear'")
  if noise_dist not in noise_lib.NOISE_DISTS:
    raise ValueError(f'noise_dist={noise_dist!r}: expected one of {noise_lib.NOISE_DISTS}')
  if variant.startswith('noisy') and not np.isfinite(float(snr_db)):
    raise ValueError(f'snr_db={snr_db!r} must be a finite number of dB for variant {variant!r}')
  spec_lib.check_tree(shapes, specs, 'source params')
  sizes = spec_lib.axis_sizes(shapes, specs)
  fac = factors_lib.resolve_factors(factors, sizes, kv_rule)
  flat_s = spec_lib.flatten(specs, is_leaf=spec_lib.is_spec)
  flat_p = spec_lib.flatten(shapes)

  n_embed = fac.get('embed', 1)
  tied = [p for p, s in flat_s.items() if s.role == 'tied_embedding']
  finals = [p for p, s in flat_s.items() if s.role == 'final_norm']
  notes = []
  final_scale = 1.0
  untie_from = None
  if tied and n_embed > 1:
    if len(tied) > 1:
      raise ValueError(f'more than one leaf has role tied_embedding: {tied}')
    if tie == 'keep':
      if not finals:
        raise ValueError(
            f'{tied[0]!r} is a tied embedding, so the readout sees [h, ..., h] against '
            f'[E, ..., E] and the logits grow {n_embed}x; the fix divides the final norm\'s '
            f'gain and bias by {n_embed}, but no leaf has role final_norm (a non-parametric '
            f"final norm, e.g. OLMo). Pass tie='untie' to add a separate readout E^T/n "
            f'(the destination then has tie_embeddings=False)')
      final_scale = 1.0 / n_embed
      notes.append(f'tied embeddings kept: final norm gain/bias divided by {n_embed}')
    else:
      if readout_path is None:
        raise ValueError("tie='untie' needs readout_path, the destination path of the new "
                         "(embed, vocab) readout kernel, e.g. 'lm_head/kernel'")
      if readout_path in flat_s:
        raise ValueError(f'readout_path {readout_path!r} already exists in the source tree')
      untie_from = tied[0]
      notes.append(f'untied: {readout_path} = {untie_from}^T / {n_embed}')

  query_scale = 1.0
  n_hd = fac.get('head_dim', 1)
  if n_hd > 1 and attn_scale == 'sqrt':
    if not any(s.role == 'query' for s in flat_s.values()):
      raise ValueError(f'head_dim is widened {n_hd}x under a 1/sqrt(d_head) logit scale, which '
                       f'needs the queries scaled by {n_hd}^-1/2, but no leaf has role query')
    query_scale = n_hd ** -0.5
    notes.append(f'queries scaled by {n_hd}^-1/2 (head_dim growth, 1/sqrt(d) logits)')

  leaves = []
  for path, s in flat_s.items():
    shape = tuple(int(d) for d in np.shape(flat_p[path]))
    f = tuple(1 if ax is None else fac.get(ax, 1) for ax in s.axes)
    scale = 1.0
    if s.role == 'query':
      scale = query_scale
    elif s.role == 'final_norm':
      scale = final_scale
    dspec = s
    if untie_from == path:
      dspec = dataclasses.replace(s, role='embedding')
    leaves.append(LeafPlan(path, path, None, dspec, shape,
                           tuple(d * k for d, k in zip(shape, f)), f, scale))
  if untie_from is not None:
    s = flat_s[untie_from]
    if s.rank != 2 or len(s.fan_in) != 1:
      raise ValueError(f'cannot untie {untie_from!r}: expected a (vocab, embed) table, '
                       f'got axes {s.axes} with fan_in {s.fan_in}')
    perm = (1, 0)
    axes = (s.axes[1], s.axes[0])
    src_shape = tuple(int(d) for d in np.shape(flat_p[untie_from]))
    f = tuple(1 if ax is None else fac.get(ax, 1) for ax in axes)
    rspec = ParamSpec(axes, (0,), 'readout')
    leaves.append(LeafPlan(readout_path, untie_from, perm, rspec, src_shape,
                           tuple(src_shape[p] * k for p, k in zip(perm, f)), f, 1.0))
  return ClonePlan(tuple(leaves), tuple(sorted(fac.items())), variant, float(snr_db),
                   noise_dist, tuple(notes))


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


def build_leaf(w: jax.Array, lp: LeafPlan, variant: str, snr_db: float,
               seeds: jax.Array | None = None, noise_dist: str = 'irwin_hall') -> jax.Array:
  """The destination leaf `lp.dst_shape` from the source leaf `lp.src_shape`.

  `seeds`: uint32 [n_j - 1, 2] from `leaf_seeds`, used by the noisy variants only.
  """
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
  if variant.startswith('noisy') and lp.n_in > 1:
    y = y + noise_lib.zero_sum_noise(w.astype(cdt), lp, m, snr_db, noise_dist, seeds, bshape, cdt)
  return y.astype(dtype).reshape(lp.dst_shape)


def needs_noise(lp: LeafPlan, variant: str) -> bool:
  return variant.startswith('noisy') and lp.n_in > 1


def noise_draws(lp: LeafPlan) -> int:
  """Independent draws per row: n_j - 1 for the first widened fan-in axis j."""
  return lp.factors[lp.widened_in[0]] - 1


@functools.lru_cache(maxsize=512)
def _jitted_builder(lp: LeafPlan, variant: str, snr_db: float, noise_dist: str):
  return jax.jit(lambda w, seeds: build_leaf(w, lp, variant, snr_db, seeds, noise_dist))


def build_leaf_cached(w: Any, lp: LeafPlan, variant: str, snr_db: float = 0.0,
                      seeds: jax.Array | None = None, noise_dist: str = 'irwin_hall') -> jax.Array:
  """`build_leaf`, through a compiled builder cached by shapes (traced inputs: inline)."""
  if isinstance(w, jax.core.Tracer) or isinstance(seeds, jax.core.Tracer):
    return build_leaf(w, lp, variant, snr_db, seeds, noise_dist)
  key = dataclasses.replace(lp, path='', src='')
  return _jitted_builder(key, variant, snr_db, noise_dist)(w, seeds)


def apply_plan(plan: ClonePlan, params: Any, rng: jax.Array | None = None) -> dict[str, Any]:
  """Builds the destination params (nested dict) from source params.

  Jit-able (see `clone_fn`).  Called eagerly, each leaf runs through a
  compiled builder cached by the leaf's shape and factors (not its path), so
  the layers of a model, and repeated clones, share compilations.
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
    out[lp.path] = build_leaf_cached(w, lp, plan.variant, plan.snr_db, seeds, plan.noise_dist)
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


def logical_shardings(specs: Any, mesh: jax.sharding.Mesh,
                      rules: Any) -> Any:
  """NamedShardings from a ParamSpec tree via Flax logical-axis rules."""
  import flax.linen as nn  # local: keeps this module importable without the model stack
  pspecs = jax.tree.map(lambda s: jax.sharding.PartitionSpec(*s.axes), specs,
                        is_leaf=spec_lib.is_spec)
  return nn.logical_to_mesh_sharding(pspecs, mesh, rules)


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
    out_shardings = logical_shardings(plan.dst_specs, mesh, rules)
  fn = lambda params, rng=None: apply_plan(plan, params, rng)
  return jax.jit(fn, out_shardings=out_shardings, donate_argnums=(0,) if donate else ())
