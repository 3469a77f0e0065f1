"""Symmetry diagnostic: how alike the cloned copies of each weight still are.

The paper's metric: the cosine similarity between a row's cloned parts.  For a
leaf with widened fan-in axes, each output unit (row: one coordinate of the
fan-out axes) has N_in incoming weight vectors, one per fan-in block; the
metric is the mean pairwise cosine similarity of those vectors, averaged over
rows (two all-zero vectors count as identical, a zero and a nonzero vector as
orthogonal).  A symmetric clone scores 1 and stays at 1 forever under deterministic
training (the copies receive identical gradients: the extra width is wasted);
noise lowers it at once (10 dB: about 0.82) and training moves it further.
A diagonal clone starts at 0 (a row's off-diagonal blocks are zero).

Leaves widened only along fan-out axes (embeddings, biases, norm gains, q/k/v
kernels when embed is not widened) compare their fan-out blocks instead: per
fan-in coordinate (e.g. per vocabulary row), the copies' vectors.

Cost: a few elementwise passes and reductions over the params, jit-able, so it
can be logged every few hundred steps.  Scanned leaves get one value per layer.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hyperinit import spec as spec_lib

_NUMBERED = re.compile(r'^(.+)_(\d+)$')


def _leaf_similarity(x: jax.Array, s: spec_lib.ParamSpec, f: tuple[int, ...]) -> jax.Array | None:
  """Mean pairwise cosine similarity of the copies; [L] for a 'layers' axis, else scalar."""
  w_in = [i for i in s.fan_in if f[i] > 1]
  w_out = [i for i in s.fan_out if f[i] > 1]
  if w_in:
    split, vec = w_in, list(s.fan_in)
  elif w_out:
    split, vec = w_out, [i for i in s.fan_out if s.axes[i] != 'layers']
  else:
    return None
  # Expanded layout: a block dim (size f) before each split axis.
  shape, bdims, vdims, pos = [], [], [], {}
  for i, d in enumerate(x.shape):
    if i in split:
      bdims.append(len(shape))
      shape += [f[i], d // f[i]]
    else:
      shape += [d]
    pos[i] = len(shape) - 1
    if i in vec:
      vdims.append(pos[i])
  y = x.astype(jnp.float32).reshape(shape)
  nb = int(np.prod([f[i] for i in split]))
  n2 = jnp.sum(jnp.square(y), axis=tuple(vdims), keepdims=True)
  nonzero = n2 > 0
  u = y * jnp.where(nonzero, jax.lax.rsqrt(jnp.where(nonzero, n2, 1.0)), 0.0)
  tot = jnp.sum(u, axis=tuple(bdims), keepdims=True)
  sq = jnp.sum(jnp.square(tot), axis=tuple(vdims))
  cnt = jnp.sum(nonzero, axis=tuple(bdims), keepdims=True).astype(jnp.float32)
  cnt = jnp.squeeze(cnt, axis=tuple(vdims))
  zeros = nb - cnt
  # Ordered pairs: sum of cosines over nonzero pairs, plus 1 per (zero, zero)
  # pair (identical copies), 0 for a zero paired with a nonzero vector.
  pair = (sq - cnt + zeros * (zeros - 1)) / (nb * (nb - 1))   # [rows..., size-1 block dims]
  layer_ax = [i for i, ax in enumerate(s.axes) if ax == 'layers']
  if layer_ax:
    # Position of the layers dim after removing vector dims.
    kept = [d for d in range(len(shape)) if d not in vdims]
    lpos = kept.index(pos[layer_ax[0]])
    pair = jnp.moveaxis(pair, lpos, 0)
    return jnp.mean(pair.reshape(pair.shape[0], -1), axis=1)
  return jnp.mean(pair)


def symmetry(params: Any, specs: Any, factors: Mapping[str, int]) -> dict[str, jax.Array]:
  """Per-leaf similarity of cloned copies.

  Args:
    params: destination (cloned, possibly trained) params.
    specs: their `ParamSpec` tree.
    factors: the clone's factors per logical axis (`plan.factor_dict`; must
      include kv_heads when they were widened).

  Returns:
    {leaf path: scalar, or [L] per layer for scanned leaves}; leaves with no
    widened axis are absent.
  """
  flat_p = spec_lib.flatten(params)
  out = {}
  for path, s in spec_lib.flatten(specs, is_leaf=spec_lib.is_spec).items():
    x = flat_p[path]
    f = tuple(1 if ax is None else int(factors.get(ax, 1)) for ax in s.axes)
    for i, (d, k) in enumerate(zip(np.shape(x), f)):
      if d % k:
        raise ValueError(f'leaf {path!r} axis {s.axes[i]!r} has size {d}, not a multiple of the '
                         f'clone factor {k}')
    v = _leaf_similarity(jnp.asarray(x), s, f)
    if v is not None:
      out[path] = v
  return out


def symmetry_summary(params: Any, specs: Any, factors: Mapping[str, int],
                     leaves: str = 'fan_in') -> dict[str, jax.Array]:
  """Scalars for a training log: 'symmetry/overall' and 'symmetry/layer_<i>'.

  overall = mean over leaves (a scanned leaf counts once, its layers averaged);
  layer_i = mean over the leaves of block i (scanned 'layers' index, or the
  `<prefix>_<i>` subtree of unrolled blocks).  leaves='fan_in' (default) uses
  only the leaves with a widened fan-in axis (the weight matrices: the paper's
  row metric); 'all' also averages in the fan-out-only leaves.
  """
  if leaves not in ('fan_in', 'all'):
    raise ValueError(f"leaves={leaves!r}: expected 'fan_in' or 'all'")
  per = symmetry(params, specs, factors)
  if leaves == 'fan_in':
    flat_s = spec_lib.flatten(specs, is_leaf=spec_lib.is_spec)
    per = {p: v for p, v in per.items()
           if any(int(factors.get(flat_s[p].axes[i], 1)) > 1 for i in flat_s[p].fan_in
                  if flat_s[p].axes[i] is not None)}
  if not per:
    raise ValueError(f'no leaf is widened by factors {dict(factors)}')
  out = {'symmetry/overall': jnp.mean(jnp.stack([jnp.mean(v) for v in per.values()]))}
  layers: dict[int, list[jax.Array]] = {}
  for path, v in per.items():
    if v.ndim == 1:
      for i in range(v.shape[0]):
        layers.setdefault(i, []).append(v[i])
    else:
      m = _NUMBERED.match(path.split('/')[0])
      if m:
        layers.setdefault(int(m.group(2)), []).append(v)
  for i in sorted(layers):
    out[f'symmetry/layer_{i}'] = jnp.mean(jnp.stack(layers[i]))
  return out


def symmetry_fn(specs: Any, factors: Mapping[str, int], leaves: str = 'fan_in'):
  """A jitted `params -> symmetry_summary(...)`."""
  factors = dict(factors)
  return jax.jit(lambda params: symmetry_summary(params, specs, factors, leaves))
