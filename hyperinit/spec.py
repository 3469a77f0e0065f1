"""Per-parameter annotations: logical axis names, fan-in axes and a role.

Every parameter leaf of a hyperinit model is declared once with a `ParamSpec`.
Sharding, HyperCloning, muP and LoGAH all read that one annotation; none of
them keeps a table of parameter names per model family.

A spec tree is a pytree with the same structure as the params whose leaves are
`ParamSpec`s (plain frozen dataclasses, so `jax.tree.map(f, params, specs)`
pairs them up).

Inside a Flax module, a parameter is declared with::

    self.param('kernel', annotated(init_fn, axes=('embed', 'mlp'), fan_in=(0,)),
               shape, param_dtype)

which stores the value in an `Annotated` box (a `flax.linen.LogicallyPartitioned`
subclass, so Flax's own logical-sharding utilities work on it unchanged).  A user's
own linen model declares the same with any Flax initializer::

    nn.Dense(vocab, kernel_init=with_axes(nn.initializers.lecun_normal(), ('embed', 'vocab'),
                                          role='readout'))

(NNX: `nnx.with_partitioning(init, axes, fan_in=..., role=...)`, the same metadata.)
What is left out is inferred (`complete_specs`, `infer_roles`); `hyperinit.from_flax`
is the one call from a user's module to `(params, specs)`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import struct, traverse_util

# Roles: what the transforms need to know beyond the axes.  Most leaves have
# no role.  'query' marks the attention query projection (scaled when the head
# dim is widened); 'final_norm' marks the norm feeding the readout; and
# 'tied_embedding' marks a token embedding that is also used, transposed, as
# the readout.
ROLES = frozenset({'', 'embedding', 'tied_embedding', 'position', 'norm',
                   'final_norm', 'query', 'readout', 'cls_token'})

# Logical axes that touch the model's external inputs/outputs or its structure: their size
# and index order are fixed by the data (vocab, classes, channels, patch pixels, positions)
# or they are not a width at all (layers).  Every other named axis is a width whose channels
# are interchangeable: HyperCloning widens only those, LoGAH's channel permutation permutes
# only those.
FIXED_AXES = frozenset({'vocab', 'classes', 'position', 'layers', 'patch', 'channels'})


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """Annotation of one parameter leaf.

  Attributes:
    axes: one logical axis name (or None) per array dimension, e.g.
      ('embed', 'heads', 'head_dim') for a query kernel of shape (D, H, Dh).
    fan_in: indices of the dimensions contracted with the layer input, e.g.
      (0,) for a Dense kernel (in, out), (0, 1) for an attention output
      kernel (heads, head_dim, embed), (0,) for a token embedding (vocab,
      embed) whose input is a one-hot over the vocabulary, () for biases and
      norm gains.
    role: see `ROLES`.
  """
  axes: tuple[str | None, ...]
  fan_in: tuple[int, ...] = ()
  role: str = ''

  def __post_init__(self):
    object.__setattr__(self, 'axes', tuple(self.axes))
    object.__setattr__(self, 'fan_in', tuple(int(i) for i in self.fan_in))
    if any(i < 0 or i >= len(self.axes) for i in self.fan_in):
      raise ValueError(f'fan_in {self.fan_in} out of range for axes {self.axes}')
    if self.role not in ROLES:
      raise ValueError(f'unknown role {self.role!r}; expected one of {sorted(ROLES)}')

  @property
  def rank(self) -> int:
    return len(self.axes)

  @property
  def fan_out(self) -> tuple[int, ...]:
    """Dimensions that are not fan-in (for a bias or gain: all of them)."""
    return tuple(i for i in range(self.rank) if i not in self.fan_in)

  def writes_residual(self, residual_axis: str = 'embed') -> bool:
    """Whether this block leaf writes into the residual stream: its only fan-out axis
    (besides 'layers') is `residual_axis` and it is not a norm gain, i.e. a residual
    branch's last layer (attention / MLP output kernel and bias)."""
    out = tuple(self.axes[i] for i in self.fan_out if self.axes[i] != 'layers')
    return out == (residual_axis,) and self.role not in ('norm', 'final_norm')

  def size_of(self, shape: tuple[int, ...], dims: Iterable[int]) -> int:
    return int(math.prod(shape[i] for i in dims))

  def to_json(self) -> dict[str, Any]:
    return {'axes': list(self.axes), 'fan_in': list(self.fan_in), 'role': self.role}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> 'ParamSpec':
    return cls(tuple(d['axes']), tuple(d.get('fan_in', ())), d.get('role', ''))


class Annotated(nn.LogicallyPartitioned):
  """A Flax axis-metadata box carrying a full `ParamSpec`.

  `names` (the logical axes) is inherited, so `nn.get_partition_spec` and
  `nn.logical_to_mesh_sharding` work unchanged; `fan_in` and `role` ride along
  and survive `nn.scan` (which inserts a 'layers' axis and shifts fan_in).
  `fan_in=None` (from `with_axes` without one) means "not declared": inferred
  by `complete_specs`.
  """
  fan_in: tuple[int, ...] | None = struct.field(default=(), pytree_node=False)
  role: str = struct.field(default='', pytree_node=False)

  def add_axis(self, index, params):
    new = super().add_axis(index, params)
    if self.fan_in is None:
      return new
    return new.replace(fan_in=tuple(i + (i >= index) for i in self.fan_in))

  def remove_axis(self, index, params):
    new = super().remove_axis(index, params)
    if self.fan_in is None:
      return new
    return new.replace(fan_in=tuple(i - (i > index) for i in self.fan_in))

  def spec(self) -> ParamSpec:
    if self.fan_in is None:
      raise ValueError(f'axes {tuple(self.names)}: fan_in not declared (complete_specs infers it)')
    return ParamSpec(tuple(self.names), self.fan_in, self.role)


# An initializer that knows which dims are fan-in: (key, shape, dtype, fan_in).
FanInInit = Callable[[jax.Array, tuple[int, ...], Any, tuple[int, ...]], jax.Array]


def annotated(init_fn: FanInInit, axes: tuple[str | None, ...],
              fan_in: tuple[int, ...] = (), role: str = ''):
  """Wraps a fan-in-aware initializer so `Module.param` stores an `Annotated` box."""
  spec = ParamSpec(axes, fan_in, role)  # validates early, at module definition

  def init(key, shape, dtype):
    if len(shape) != spec.rank:
      raise ValueError(f'parameter of shape {shape} annotated with {spec.rank} axes {axes}')
    return Annotated(init_fn(key, shape, dtype, spec.fan_in), names=spec.axes,
                     fan_in=spec.fan_in, role=spec.role)

  return init


def with_axes(init: Callable[..., Any], axes: tuple[str | None, ...], *,
              fan_in: tuple[int, ...] | None = None, role: str = ''):
  """A Flax initializer `(key, shape, dtype)` whose value is boxed with its axes, fan-in and role.

  Drop-in for `nn.with_logical_partitioning(init, axes)` (the box is a
  `LogicallyPartitioned`, so sharding reads it unchanged) with room for what
  HyperCloning and muP need beyond the axes: `fan_in` (indices of the dims
  contracted with the input; None: inferred, see `complete_specs`) and `role`
  (see `ROLES`; '' lets `infer_roles` decide).
  """
  ParamSpec(tuple(axes), fan_in or (), role)   # validates early, at module definition

  def boxed_init(key, shape, dtype=None):
    value = init(key, shape) if dtype is None else init(key, shape, dtype)
    if len(shape) != len(axes):
      raise ValueError(f'parameter of shape {shape} annotated with {len(axes)} axes {axes}')
    return Annotated(value, names=tuple(axes),
                     fan_in=None if fan_in is None else tuple(fan_in), role=role)

  return boxed_init


def is_box(x) -> bool:
  """Whether `x` is a Flax axis-metadata box (`nn.LogicallyPartitioned`, `Annotated`, ...)."""
  return isinstance(x, nn.meta.AxisMetadata)


@dataclasses.dataclass(frozen=True)
class Partial:
  """What a leaf's annotation declares: axes / fan_in None where it declares nothing."""
  shape: tuple[int, ...]
  axes: tuple[str | None, ...] | None = None
  fan_in: tuple[int, ...] | None = None
  role: str = ''


def complete_specs(leaves: Mapping[str, Partial]) -> dict[str, ParamSpec]:
  """{path: ParamSpec} from {path: Partial}: what a module declared, the rest inferred.

  * A leaf with no axes (a bias left as Flax gives it, beside an annotated
    kernel) takes its sibling 'kernel''s trailing axes when its shape is the
    kernel's trailing shape: a bias's axes are its kernel's output axes.
  * A kernel with no declared fan_in contracts the dims its bias does not
    have (Dense (in, out) + bias (out,): (0,); Conv (kh, kw, cin, cout): (0, 1, 2);
    DenseGeneral (h, d, out): (0, 1)); with no bias, Flax's Dense convention
    (0,).  Rank-1 leaves have none.

  Raises:
    TypeError naming every leaf path whose axes cannot be inferred, and how to
    declare them.
  """
  axes = {p: l.axes for p, l in leaves.items()}
  for path, leaf in leaves.items():
    if leaf.axes is not None:
      continue
    kernel = leaves.get(_sibling(path, 'kernel'))
    n = len(leaf.shape)
    if (kernel is not None and kernel.axes is not None and 0 < n < len(kernel.shape)
        and tuple(kernel.shape[-n:]) == tuple(leaf.shape)):
      axes[path] = tuple(kernel.axes[-n:])
  missing = [p for p, a in axes.items() if a is None]
  if missing:
    shown = ', '.join(f'{p!r} {leaves[p].shape}' for p in missing[:6])
    raise TypeError(
        f'leaf {shown}{" ..." if len(missing) > 6 else ""} has no axis annotation (and no '
        f"annotated sibling 'kernel' to take it from): annotate it (spec.with_axes / "
        f"nn.with_logical_partitioning / nnx.with_partitioning) or pass axes={{{missing[0]!r}: "
        f'(...)}} to hyperinit.from_flax')
  out = {}
  for path, leaf in leaves.items():
    fan_in = leaf.fan_in
    if fan_in is None:
      fan_in = _guess_fan_in(leaf.shape, leaves.get(_sibling(path, 'bias')))
    out[path] = ParamSpec(axes[path], fan_in, leaf.role)
  return out


def _sibling(path: str, name: str) -> str:
  return path.rsplit('/', 1)[0] + '/' + name if '/' in path else name


def _guess_fan_in(shape: tuple[int, ...], bias: Partial | None) -> tuple[int, ...]:
  if len(shape) < 2:
    return ()
  if bias is not None and 0 < len(bias.shape) < len(shape) and \
      tuple(shape[-len(bias.shape):]) == tuple(bias.shape):
    return tuple(range(len(shape) - len(bias.shape)))
  return (0,)


def shape_of(x) -> tuple[int, ...]:
  """Shape of an array, a ShapeDtypeStruct or a scalar."""
  return tuple(getattr(x, 'shape', np.shape(x)))


def partial_from_box(x) -> Partial:
  """What a Flax box (or an unboxed leaf) declares about its leaf."""
  if isinstance(x, Annotated):
    return Partial(shape_of(x.value), tuple(x.names), x.fan_in, x.role)
  if isinstance(x, nn.LogicallyPartitioned):
    return Partial(shape_of(x.value), tuple(x.names))
  return Partial(shape_of(nn.meta.unbox(x)))


def specs_from_boxed(boxed: Any) -> Any:
  """Spec tree from a tree of boxes (e.g. `jax.eval_shape(model.init, ...)['params']`).

  `Annotated` boxes give their spec; a plain `nn.LogicallyPartitioned` box (a
  user's model annotated for sharding only) and an unboxed leaf get what
  `complete_specs` infers (a bias: its kernel's output axes; a kernel: the
  dims its bias lacks, else dimension 0).  Pass such models through
  `with_fan_in` when that guess is wrong, or declare fan_in with `with_axes`.
  Roles are not inferred here (`infer_roles`; `hyperinit.from_flax` does both).
  """
  flat = flatten(boxed, is_leaf=is_box)
  done = complete_specs({p: partial_from_box(x) for p, x in flat.items()})
  return jax.tree_util.tree_map_with_path(lambda p, _: done[path_str(p)], boxed, is_leaf=is_box)


def infer_roles(specs: Any) -> Any:
  """`specs` with the roles the axes imply set on leaves that have none.

  * 'readout': a matrix whose fan-out axes hold 'vocab' or 'classes' (the
    data's output axis) and whose fan-in axes hold none of `FIXED_AXES`;
  * 'embedding' / 'position': a matrix whose only fan-in axis is 'vocab' /
    'position' (a table indexed by tokens / positions) and the rest width-like.
  A declared role always wins; a tied embedding (used transposed as the
  readout) cannot be seen in the params: declare it ('tied_embedding').
  """
  def one(s: ParamSpec) -> ParamSpec:
    if s.role or s.rank < 2:
      return s
    ins = {s.axes[i] for i in s.fan_in}
    outs = {s.axes[i] for i in s.fan_out}
    if outs & {'vocab', 'classes'} and not ins & FIXED_AXES:
      return dataclasses.replace(s, role='readout')
    if len(ins) == 1 and ins <= {'vocab', 'position'} and not outs & FIXED_AXES:
      return dataclasses.replace(s, role='embedding' if 'vocab' in ins else 'position')
    return s
  return jax.tree.map(one, specs, is_leaf=is_spec)


def with_fan_in(specs: Any, overrides: Mapping[str, tuple[int, ...]]) -> Any:
  """Returns `specs` with fan_in replaced for the leaves named by path string."""
  def one(path, s):
    p = path_str(path)
    return dataclasses.replace(s, fan_in=overrides[p]) if p in overrides else s
  return jax.tree_util.tree_map_with_path(one, specs, is_leaf=is_spec)


def unbox(tree: Any) -> Any:
  """Plain arrays from a tree of boxes."""
  return nn.meta.unbox(tree)


def is_spec(x) -> bool:
  return isinstance(x, ParamSpec)


def path_str(path) -> str:
  """'block_0/attn/query/kernel' from a jax key path (the one path format of the project)."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def flatten(tree: Any, is_leaf=None) -> dict[str, Any]:
  """{'a/b/c': leaf} for any pytree (dicts, optax states, dataclasses), `path_str` keys."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {path_str(p): v for p, v in leaves}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `flatten` for nested dicts: {'a/b': x} -> {'a': {'b': x}}."""
  return traverse_util.unflatten_dict(flat, sep='/')


def check_tree(params: Any, specs: Any, what: str = 'params') -> None:
  """Raises ValueError naming the first leaf whose tree or rank disagrees with the specs."""
  flat_p = flatten(params)
  flat_s = flatten(specs, is_leaf=is_spec)
  missing = sorted(set(flat_s) - set(flat_p))
  extra = sorted(set(flat_p) - set(flat_s))
  if missing or extra:
    raise ValueError(f'{what} do not match the annotation tree: missing leaves {missing[:5]}'
                     f'{"..." if len(missing) > 5 else ""}, unannotated leaves {extra[:5]}'
                     f'{"..." if len(extra) > 5 else ""}')
  for name, s in flat_s.items():
    shape = np.shape(flat_p[name])
    if len(shape) != s.rank:
      raise ValueError(f'{what} leaf {name!r} has shape {shape} (rank {len(shape)}) but is '
                       f'annotated with {s.rank} axes {s.axes}')


def axis_sizes(params_or_shapes: Any, specs: Any) -> dict[str, int]:
  """Size of every named logical axis; raises if one name has two sizes."""
  sizes: dict[str, tuple[int, str]] = {}
  flat_p = flatten(params_or_shapes)
  for name, s in flatten(specs, is_leaf=is_spec).items():
    shape = np.shape(flat_p[name])
    for ax, n in zip(s.axes, shape):
      if ax is None:
        continue
      if ax in sizes and sizes[ax][0] != n:
        raise ValueError(f'logical axis {ax!r} has size {n} in {name!r} but '
                         f'{sizes[ax][0]} in {sizes[ax][1]!r}')
      sizes.setdefault(ax, (int(n), name))
  return {k: v[0] for k, v in sizes.items()}


def count(tree: Any) -> int:
  """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
  return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def specs_to_json(specs: Any) -> str:
  """Serialises a spec tree (flattened by path) so checkpoints can carry it."""
  return json.dumps({k: v.to_json() for k, v in flatten(specs, is_leaf=is_spec).items()},
                    indent=1, sort_keys=True)


def specs_from_json(text: str) -> dict[str, Any]:
  """Inverse of `specs_to_json`, as a nested dict."""
  return unflatten({path: ParamSpec.from_json(d) for path, d in json.loads(text).items()})
