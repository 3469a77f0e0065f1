"""Tensor-layout conversions between hyperinit params and Hugging Face tensors.

A family's name table (see `families.py`) is a list of `Entry`s; each says
which of our leaves become which HF tensors and through which `Op`.  The ops
never look at parameter names: they read the leaf's `ParamSpec`.  A kernel's
fan-in axes are its leading axes, so its "matrix view" is
(prod(fan-in dims), prod(other dims)) -- (in, out), the layout of a GPT-2
Conv1D or a torch Embedding; torch `nn.Linear` stores the transpose.  Leaves
without fan-in (biases, norm gains) flatten to a vector.

Ops work on NumPy arrays (import/export, on the host) and on jax tracers
(`jax.eval_shape`, to know every HF shape without allocating).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperinit.spec import ParamSpec


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def matrix_shape(shape: Sequence[int], s: ParamSpec) -> tuple[int, ...]:
  """(prod fan-in dims, prod other dims) for a kernel, (size,) for a vector leaf."""
  if not s.fan_in:
    return (math.prod(shape),)
  k = len(s.fan_in)
  if s.fan_in != tuple(range(k)):
    raise ValueError(f'fan-in axes {s.fan_in} of a leaf annotated {s.axes} are not its leading '
                     'axes; it has no (in, out) matrix view')
  return (math.prod(shape[:k]), math.prod(shape[k:]))


def drop_axis(s: ParamSpec, ax: int) -> ParamSpec:
  """The spec of `x.take(i, axis=ax)`."""
  return ParamSpec(s.axes[:ax] + s.axes[ax + 1:],
                   tuple(i - (i > ax) for i in s.fan_in if i != ax), s.role)


class Op:
  """Maps a list of our leaves to a list of HF tensors and back."""

  def to_hf(self, xs: list, specs: list[ParamSpec]) -> list:
    raise NotImplementedError

  def from_hf(self, ys: list, specs: list[ParamSpec], shapes: list[tuple[int, ...]]) -> list:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Plain(Op):
  """One leaf <-> one tensor: the matrix view, transposed for torch nn.Linear.

  lead: unit dims HF puts in front (ViT cls_token (1, 1, D), positions (1, N, D)).
  """
  transpose: bool = False
  lead: int = 0

  def to_hf(self, xs, specs):
    (x,), (s,) = xs, specs
    m = x.reshape(matrix_shape(x.shape, s))
    m = m.T if self.transpose else m
    return [m.reshape((1,) * self.lead + tuple(m.shape))]

  def from_hf(self, ys, specs, shapes):
    (y,), (shape,) = ys, shapes
    y = y.reshape(y.shape[self.lead:])
    return [(y.T if self.transpose else y).reshape(shape)]


@dataclasses.dataclass(frozen=True)
class Permute(Op):
  """One leaf <-> one tensor with permuted axes.

  ViT patch embedding: torch conv weight (E, C, p, p) = ours (p, p, C, E).
  """
  perm: tuple[int, ...]

  def to_hf(self, xs, specs):
    return [xs[0].transpose(self.perm)]

  def from_hf(self, ys, specs, shapes):
    return [ys[0].transpose(tuple(np.argsort(self.perm))).reshape(shapes[0])]


@dataclasses.dataclass(frozen=True)
class Concat(Op):
  """Several leaves fused into one tensor along the output axis (GPT-2 c_attn = [q | k | v])."""
  part: Plain = Plain()

  @property
  def _axis(self) -> int:
    return 0 if self.part.transpose else -1

  def to_hf(self, xs, specs):
    mats = [self.part.to_hf([x], [s])[0] for x, s in zip(xs, specs)]
    return [_xp(mats[0]).concatenate(mats, axis=self._axis)]

  def from_hf(self, ys, specs, shapes):
    sizes = [matrix_shape(sh, s)[-1] for sh, s in zip(shapes, specs)]
    parts = _xp(ys[0]).split(ys[0], np.cumsum(sizes)[:-1].tolist(), axis=self._axis)
    return [self.part.from_hf([p], [s], [sh])[0] for p, s, sh in zip(parts, specs, shapes)]


@dataclasses.dataclass(frozen=True)
class HeadInterleave(Op):
  """Several (..., heads, head_dim) leaves fused per head, torch nn.Linear layout.

  GPT-NeoX query_key_value: output rows are ordered (head, [q, k, v], head_dim).
  """

  def to_hf(self, xs, specs):
    st = _xp(xs[0]).stack(xs, axis=-2)                 # (..., H, n, Dh)
    s = specs[0]
    s = ParamSpec(s.axes[:-1] + (None,) + s.axes[-1:], s.fan_in, s.role)
    return Plain(transpose=True).to_hf([st], [s])

  def from_hf(self, ys, specs, shapes):
    n, shape = len(shapes), tuple(shapes[0])
    y = ys[0].T.reshape(shape[:-1] + (n, shape[-1]))
    return [y[..., k, :] for k in range(n)]


@dataclasses.dataclass(frozen=True)
class Unfuse(Op):
  """One leaf with an unnamed fused axis <-> one tensor per index of that axis.

  Llama gate_proj / up_proj = our SwiGLU kernel (embed, 2, mlp) at index 0 / 1.
  """
  part: Plain = Plain(transpose=True)

  def to_hf(self, xs, specs):
    (x,), (s,) = xs, specs
    ax = s.axes.index(None)
    sub = drop_axis(s, ax)
    return [self.part.to_hf([_xp(x).take(x, k, axis=ax)], [sub])[0] for k in range(x.shape[ax])]

  def from_hf(self, ys, specs, shapes):
    (s,), (shape,) = specs, shapes
    ax = s.axes.index(None)
    sub, sub_shape = drop_axis(s, ax), tuple(shape[:ax]) + tuple(shape[ax + 1:])
    parts = [self.part.from_hf([y], [sub], [sub_shape])[0] for y in ys]
    return [_xp(parts[0]).stack(parts, axis=ax)]


@dataclasses.dataclass(frozen=True)
class Entry:
  """HF tensor names <-> our leaf paths (relative to the model or to one block)."""
  hf: tuple[str, ...]
  ours: tuple[str, ...]
  op: Op


def rows(*triples) -> tuple[Entry, ...]:
  """Entries from (hf name(s), our path(s), op) triples; a str is a 1-tuple."""
  as_tuple = lambda v: (v,) if isinstance(v, str) else tuple(v)
  return tuple(Entry(as_tuple(h), as_tuple(o), op) for h, o, op in triples)


@functools.lru_cache(maxsize=4096)
def hf_shapes(op: Op, specs: tuple[ParamSpec, ...],
              shapes: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
  """Shapes of `op.to_hf` outputs for leaves of these shapes (traced, no allocation)."""
  out = jax.eval_shape(lambda *xs: op.to_hf(list(xs), list(specs)),
                       *[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
  return tuple(tuple(o.shape) for o in out)


# --- the scanned layout ------------------------------------------------------------

def unstack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """Scanned layout ('blocks' leaves with a leading layers axis) -> block_0..block_{L-1}.

  A tree without 'blocks' is returned unchanged.  Leaves are indexed, not copied
  where the array type allows views (NumPy).
  """
  if 'blocks' not in params:
    return params
  out = {k: v for k, v in params.items() if k != 'blocks'}
  blocks = params['blocks']
  for leaf in jax.tree.leaves(blocks):
    if np.shape(leaf)[:1] != (num_layers,):
      raise ValueError(f"'blocks' leaf of shape {np.shape(leaf)} has no leading layers axis of "
                       f'size num_layers={num_layers}')
  for i in range(num_layers):
    out[f'block_{i}'] = jax.tree.map(lambda x, i=i: x[i], blocks)
  return out


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """block_0..block_{L-1} -> the scanned layout ('blocks', leaves stacked on axis 0)."""
  names = [f'block_{i}' for i in range(num_layers)]
  missing = [n for n in names if n not in params]
  if missing:
    raise ValueError(f'cannot stack layers: missing {missing} (num_layers={num_layers})')
  out = {k: v for k, v in params.items() if k not in names}
  blocks = [params[n] for n in names]
  out['blocks'] = jax.tree.map(lambda *xs: _xp(xs[0]).stack(xs), *blocks)
  return out
