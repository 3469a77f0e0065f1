"""Widening factors per logical axis: validation, GQA/MQA rules, conveniences.

A factor dict maps logical axis names (as used in the `ParamSpec` annotations)
to integer multipliers, e.g. `{'embed': 2, 'mlp': 2, 'heads': 2}`.  Axes not
named keep their size.  `resolve_factors` checks a user's dict against the
axis sizes found in the annotated parameter tree and fills in `kv_heads`.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

from hyperinit import spec as spec_lib

# Axes whose size is fixed by the data or that are not a width (spec.FIXED_AXES; depth
# growth lives in `depth.py`).
NON_WIDENABLE = spec_lib.FIXED_AXES

# kv-head rules: 'auto' multiplies kv heads with query heads (MHA, GQA) but keeps
# a single kv head single (MQA stays MQA); 'follow' always multiplies; 'keep'
# never does (only exact for MQA).
KV_RULES = ('auto', 'follow', 'keep')

_NET2NET = ('exact function preservation needs an integer factor n: the widened '
            'activation is n stacked copies [x, ..., x], which LayerNorm/RMSNorm and '
            'attention map to copies of their source outputs.  Net2Net-style '
            'replicate-and-divide generalises to non-integer widths but is not exact '
            'under LayerNorm (the mean and variance of a partially replicated vector '
            'change), so hyperinit refuses it; grow by an integer factor and, if you need '
            'an odd size, prune or pad afterwards')


def _as_int_factor(axis: Any, value: Any) -> int:
  """An integer >= 1, or a ValueError naming the axis."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f'factor for axis {axis!r} must be an integer, got {value!r} '
                    f'({type(value).__name__})')
  if not float(value).is_integer():
    raise ValueError(f'factor {value!r} for axis {axis!r} is not an integer: {_NET2NET}')
  n = int(value)
  if n < 1:
    raise ValueError(f'factor for axis {axis!r} must be >= 1, got {value!r}')
  return n


def factors_for(n: int, attention: str = 'heads', mlp: bool = True) -> dict[str, int]:
  """The factor dict that widens every width axis by `n`.

  Args:
    n: integer factor.
    attention: 'heads' (more heads of the same size, the default) or
      'head_dim' (same number of heads, each n times wider).
    mlp: also widen the MLP hidden axis.

  Returns:
    e.g. {'embed': 2, 'mlp': 2, 'heads': 2}; kv heads are filled in by
    `resolve_factors` according to the GQA/MQA rule.
  """
  n = _as_int_factor('all widened axes', n)
  if attention not in ('heads', 'head_dim'):
    raise ValueError(f"attention={attention!r}: expected 'heads' or 'head_dim'")
  out = {'embed': n, attention: n}
  if mlp:
    out['mlp'] = n
  return out


def resolve_factors(factors: Mapping[str, Any], sizes: Mapping[str, int],
                    kv_rule: str = 'auto') -> dict[str, int]:
  """Validated factors for every logical axis present in `sizes`.

  Args:
    factors: user factors by logical axis name.
    sizes: size of every logical axis of the source tree
      (`hyperinit.spec.axis_sizes(params, specs)`).
    kv_rule: see `KV_RULES`.

  Returns:
    {axis: factor} for every axis in `sizes` (1 where not widened).

  Raises:
    ValueError / TypeError naming the offending axis: a non-integer factor, an
    axis that must not be widened (vocab, classes, position, layers, patch,
    channels or an unnamed axis), an axis absent from the annotations, or a kv
    head factor that would break the query-head -> kv-group mapping.
  """
  if kv_rule not in KV_RULES:
    raise ValueError(f'kv_rule={kv_rule!r}: expected one of {KV_RULES}')
  out = {ax: 1 for ax in sizes}
  for ax, v in factors.items():
    if ax is None or not isinstance(ax, str):
      raise ValueError(f'cannot widen an unnamed axis ({ax!r}): only named logical axes can be '
                       f'widened; widenable axes here: {_widenable(sizes)}')
    n = _as_int_factor(ax, v)
    if ax in NON_WIDENABLE and n != 1:
      raise ValueError(f'axis {ax!r} cannot be widened (factor {n}): its size is fixed by the '
                       f'data or the architecture; widenable axes here: {_widenable(sizes)}')
    if ax not in sizes:
      if n == 1:
        continue
      raise ValueError(f'axis {ax!r} (factor {n}) does not occur in the parameter annotations; '
                       f'axes present: {sorted(sizes)}')
    out[ax] = n
  if 'kv_heads' in sizes:
    out['kv_heads'] = _kv_factor(factors, sizes, out.get('heads', 1), kv_rule)
  return out


def _widenable(sizes: Mapping[str, int]) -> list[str]:
  return sorted(a for a in sizes if a not in NON_WIDENABLE)


def _kv_factor(factors: Mapping[str, Any], sizes: Mapping[str, int], nh: int,
               kv_rule: str) -> int:
  """kv-head factor that keeps each query head's kv group.

  Query heads are duplicated as blocks h_1..h_H, h_1..h_H.  Query head i uses kv
  head i // g (g = H / KV).  With KV multiplied by nh the group size is kept and
  copy c of head i uses copy c of its kv head; with KV = 1 (MQA) every query head
  uses the one kv head whatever H is, so it may stay single.
  """
  kv = sizes['kv_heads']
  mqa = kv == 1
  if kv_rule == 'keep' and not mqa and nh > 1:
    raise ValueError(f"kv_rule='keep' keeps {kv} kv heads while query heads grow {nh}x; "
                     f'that is exact only for multi-query attention (1 kv head): with '
                     f'{kv} kv heads the query-head -> kv-group mapping would change. Use '
                     f"kv_rule='auto' or 'follow'")
  want = 1 if (mqa and kv_rule in ('auto', 'keep')) else nh
  if 'kv_heads' in factors:
    given = _as_int_factor('kv_heads', factors['kv_heads'])
    allowed = {1, nh} if mqa else {nh}
    if given not in allowed:
      raise ValueError(f'kv_heads factor {given} with heads factor {nh} would change which kv '
                       f'head each query head reads ({kv} kv heads); allowed: {sorted(allowed)}')
    return given
  return want


def factors_between(src_sizes: Mapping[str, int], dst_sizes: Mapping[str, int]) -> dict[str, int]:
  """Factors that grow `src_sizes` into `dst_sizes` (axis -> size dicts).

  Raises ValueError naming the axis when a destination size is not an integer
  multiple of the source size.
  """
  out = {}
  for ax, d in dst_sizes.items():
    if ax not in src_sizes:
      raise ValueError(f'axis {ax!r} of the destination does not exist in the source; '
                       f'source axes: {sorted(src_sizes)}')
    s = src_sizes[ax]
    if d % s:
      raise ValueError(f'axis {ax!r}: destination size {d} is not a multiple of the source size '
                       f'{s} (ratio {d / s:.4g}); {_NET2NET}')
    out[ax] = d // s
  return out
