"""Function-preserving depth growth: insert identity blocks.

A pre-norm residual block computes x + f(norm(x)) (parallel residual: x + f(.)
+ g(.)).  If every leaf that *writes into the residual stream* is zero, the
block is the identity.  Those leaves are found from the annotations alone:
inside a block, a leaf whose fan-out axes (ignoring 'layers') are exactly the
residual axis ('embed') and whose role is not 'norm' -- the attention output
kernel (heads, head_dim, embed), the MLP output kernel (mlp, embed) and their
biases.  Norm gains, which also have a lone 'embed' axis, are left alone.

New blocks copy an existing block (so their attention and MLP already compute
useful features and the zeroed output projections get informative gradients
from the first step) with those leaves zeroed:

  layout='interleave'  L -> k*L: each block i is followed by k-1 identity copies
  layout='stack'       L -> k*L: the whole stack, then k-1 identity copies of it
                       (Gstack of Du et al. 2024, made function preserving)

`zero_residual=False` gives the plain (not function-preserving) copies.
Blocks are either scanned (leaves with a 'layers' axis) or unrolled subtrees
named `<prefix>_<i>` (i = 0..L-1 with identical structure).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from hyperinit import models
from hyperinit import spec as spec_lib
from hyperinit.models.config import ModelConfig

LAYOUTS = ('interleave', 'stack')
_NUMBERED = re.compile(r'^(.+)_(\d+)$')


def _order(num_layers: int, factor: int, layout: str) -> list[tuple[int, bool]]:
  """(source layer, is_new) for every destination layer."""
  if layout == 'interleave':
    return [(i, j > 0) for i in range(num_layers) for j in range(factor)]
  return [(i, r > 0) for r in range(factor) for i in range(num_layers)]


def _unrolled_blocks(flat_s: dict[str, Any]) -> tuple[str, int]:
  """(prefix, L) of the top-level `<prefix>_<i>` subtrees, or ('', 0)."""
  groups: dict[str, set[int]] = {}
  for path in flat_s:
    m = _NUMBERED.match(path.split('/')[0])
    if m:
      groups.setdefault(m.group(1), set()).add(int(m.group(2)))
  if not groups:
    return '', 0
  if len(groups) > 1:
    raise ValueError(f'several families of numbered blocks {sorted(groups)}; cannot tell which '
                     f'are the layers')
  prefix, idx = next(iter(groups.items()))
  if idx != set(range(len(idx))):
    raise ValueError(f'blocks {prefix}_i are not numbered 0..L-1: {sorted(idx)}')
  return prefix, len(idx)


def grow_depth(params: Any, specs: Any, factor: int, layout: str = 'interleave',
               zero_residual: bool = True, *, residual_axis: str = 'embed',
               new_fill: str = 'copy') -> tuple[dict[str, Any], dict[str, Any]]:
  """Grows the number of blocks `factor`-fold; returns (params, specs).

  Args:
    params: nested dict matching `specs` (scanned or unrolled blocks).
    specs: `ParamSpec` tree.
    factor: integer >= 1; L blocks become factor * L.
    layout: 'interleave' or 'stack' (see module doc).
    zero_residual: zero the residual-writing leaves of the new blocks, which
      makes them identities (function preserving).
    residual_axis: logical name of the residual stream.
    new_fill: 'copy' (new blocks copy their source block) or 'zeros' (new
      blocks are all zero: use this for optimizer moments, which start afresh).

  Raises:
    ValueError if the tree has no blocks, or for a bad factor / layout.
  """
  if isinstance(factor, bool) or int(factor) != factor or factor < 1:
    raise ValueError(f'depth factor must be an integer >= 1, got {factor!r}')
  if layout not in LAYOUTS:
    raise ValueError(f'layout={layout!r}: expected one of {LAYOUTS}')
  if new_fill not in ('copy', 'zeros'):
    raise ValueError(f"new_fill={new_fill!r}: expected 'copy' or 'zeros'")
  spec_lib.check_tree(params, specs)
  flat_p = spec_lib.flatten(params)
  flat_s = spec_lib.flatten(specs, is_leaf=spec_lib.is_spec)

  def fill(x, s, is_new: bool):
    if not is_new:
      return x
    if new_fill == 'zeros' or (zero_residual and s.writes_residual(residual_axis)):
      return jnp.zeros_like(x)
    return x

  scanned = {p for p, s in flat_s.items() if 'layers' in s.axes}
  out_p, out_s = {}, {}
  if scanned:
    for path in flat_s:
      s, x = flat_s[path], jnp.asarray(flat_p[path])
      if path not in scanned:
        out_p[path], out_s[path] = x, s
        continue
      ax = s.axes.index('layers')
      order = _order(x.shape[ax], int(factor), layout)
      y = jnp.take(x, jnp.asarray([i for i, _ in order]), axis=ax)
      if new_fill == 'zeros' or (zero_residual and s.writes_residual(residual_axis)):
        keep = np.array([not new for _, new in order], np.float32)
        shape = [1] * x.ndim
        shape[ax] = len(order)
        y = y * jnp.asarray(keep.reshape(shape), y.dtype)
      out_p[path], out_s[path] = y, s
  else:
    prefix, num = _unrolled_blocks(flat_s)
    if not num:
      raise ValueError('found no blocks: neither leaves with a layers axis nor subtrees named '
                       '<prefix>_<i>')
    order = _order(num, int(factor), layout)
    for path in flat_s:
      head, _, rest = path.partition('/')
      m = _NUMBERED.match(head)
      if not (m and m.group(1) == prefix):
        out_p[path], out_s[path] = jnp.asarray(flat_p[path]), flat_s[path]
    for d, (i, new) in enumerate(order):
      for path in flat_s:
        head, _, rest = path.partition('/')
        if head == f'{prefix}_{i}':
          dst = f'{prefix}_{d}/{rest}'
          out_p[dst] = fill(jnp.asarray(flat_p[path]), flat_s[path], new)
          out_s[dst] = flat_s[path]
  return spec_lib.unflatten(out_p), spec_lib.unflatten(out_s)


def grow_depth_config(cfg: ModelConfig, factor: int) -> ModelConfig:
  """Destination config: num_layers * factor (residual_mult etc. kept: same function)."""
  return cfg.replace(num_layers=cfg.num_layers * int(factor))


def grow_depth_model(params: Any, cfg: ModelConfig, factor: int, layout: str = 'interleave',
                     zero_residual: bool = True) -> tuple[dict[str, Any], ModelConfig]:
  """`grow_depth` for a model config; checks the result against the deeper model."""
  out, _ = grow_depth(params, models.param_specs(cfg), factor, layout, zero_residual)
  dst_cfg = grow_depth_config(cfg, factor)
  want = spec_lib.flatten(models.param_shapes(dst_cfg))
  got = spec_lib.flatten(out)
  bad = [p for p in set(want) | set(got)
         if p not in want or p not in got or tuple(want[p].shape) != tuple(np.shape(got[p]))]
  if bad:
    raise ValueError(f'depth-grown tree does not match {dst_cfg.num_layers}-layer model at '
                     f'{sorted(bad)[:5]}')
  return out, dst_cfg


def grow_depth_opt_state(opt_state: Any, specs: Any, factor: int,
                         layout: str = 'interleave') -> Any:
  """Optimizer state for a depth-grown model: moments of new blocks start at zero."""
  paths = set(spec_lib.flatten(specs, is_leaf=spec_lib.is_spec))

  def is_param_tree(node):
    try:
      return isinstance(node, dict) and set(spec_lib.flatten(node)) == paths
    except Exception:  # pylint: disable=broad-except
      return False

  def walk(node: Any, grow: Callable[[Any], Any]):
    if is_param_tree(node):
      return grow(node)
    if hasattr(node, '_fields'):
      return type(node)(**{f: walk(getattr(node, f), grow) for f in node._fields})
    if isinstance(node, (tuple, list)):
      return type(node)(walk(v, grow) for v in node)
    return node

  return walk(opt_state, lambda t: grow_depth(t, specs, factor, layout, new_fill='zeros')[0])
