"""The plan of a HyperCloning: which destination leaf comes from which source leaf, how.

`make_plan` reads only the `ParamSpec` annotations and the source shapes: axis names pick
the factors, fan_in picks rows vs columns, roles pick the special scales (see `widen`).
The result is a static, hashable `ClonePlan` that `widen.apply_plan` / `widen.clone_fn`
execute and the optimizer-state widening and symmetry diagnostics read.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

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
