"""Device meshes, logical-axis rules and sharded initialisation.

Every parameter carries logical axis names (`ParamSpec.axes`); activations are
constrained inside the models with ('batch', 'length', 'act_*') names.  A list
of *rules* maps logical names to mesh axes ('data', 'fsdp', 'tensor'); the mesh
shape then selects the strategy:

  data parallel     mesh {'data': -1, 'fsdp': 1,  'tensor': 1}
  FSDP (ZeRO-3)     mesh {'data': 1,  'fsdp': -1, 'tensor': 1}
  tensor parallel   mesh {'data': 1,  'fsdp': 1,  'tensor': -1}
  hybrids           e.g. {'data': 2, 'fsdp': -1, 'tensor': 2}

(a rule onto a mesh axis of size 1 is a no-op).  Everything here works for any
annotated tree (params, clones, muP models, optimizer states), given its shapes
and specs:

    mesh = sharding.make_mesh({'fsdp': -1})
    rules = sharding.fit_rules(sharding.DEFAULT_RULES, shapes, specs, mesh)
    shardings = sharding.tree_shardings(shapes, specs, mesh, rules)
    params = sharding.sharded_init(lambda k: models.init_params(cfg, k), key, shardings)
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from hyperinit import spec as spec_lib

MESH_AXES = ('data', 'fsdp', 'tensor')

# A rule maps one logical name to a mesh axis, a tuple of mesh axes, or None.
# Order matters (as in Flax): for one array, a mesh axis already used by an
# earlier dimension is not used again.
Rules = Sequence[tuple[str, Any]]

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # activations: batch over every data-like axis, features over 'tensor'
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('act_embed', None),
    ('act_mlp', 'tensor'),
    ('act_heads', 'tensor'),
    ('act_kv_heads', 'tensor'),
    ('act_vocab', 'tensor'),
    # parameters: Megatron-style tensor parallelism on the "wide" axes, FSDP
    # on the model width (every matrix has an 'embed' axis, so all are split)
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('vocab', 'tensor'),
    ('classes', None),
    ('embed', 'fsdp'),
    ('head_dim', None),
    ('position', None),
    ('patch', None),
    ('channels', None),
    ('layers', None),
)


def parse_rules(text: str | None) -> tuple[tuple[str, Any], ...]:
  """Rules from text: 'embed:fsdp,mlp:tensor,vocab:,batch:data+fsdp'.

  Args:
    text: comma-separated `logical:mesh_axis[+mesh_axis...]`; an empty target
      ('vocab:') means unsharded.  None or '' gives no rules.

  Returns:
    ((logical name, mesh axis | tuple of mesh axes | None), ...) in text order.

  Raises:
    ValueError: an item without ':' or naming a mesh axis not in MESH_AXES.
  """
  out = []
  for item in filter(None, (s.strip() for s in (text or '').split(','))):
    if ':' not in item:
      raise ValueError(f'bad sharding rule {item!r}; expected logical:mesh_axis[+mesh_axis]')
    name, target = item.split(':', 1)
    axes = tuple(a for a in target.split('+') if a)
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
      raise ValueError(f'sharding rule {item!r}: unknown mesh axes {bad}; expected {MESH_AXES}')
    out.append((name.strip(), axes[0] if len(axes) == 1 else (axes or None)))
  return tuple(out)


def make_rules(overrides: str | None = None) -> tuple[tuple[str, Any], ...]:
  """DEFAULT_RULES with the rules parsed from `overrides` (see `parse_rules`) first.

  Overrides come first (the first rule for a name wins, here and in flax's
  activation rules, and rule order sets which dimension claims a mesh axis
  first); the shadowed default is dropped so each name has one rule.
  """
  over = parse_rules(overrides)
  names = {n for n, _ in over}
  return over + tuple(r for r in DEFAULT_RULES if r[0] not in names)


def make_mesh(shape: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with `AxisType.Auto` axes.

  Args:
    shape: size per axis name; missing axes are 1 and one axis may be -1
      ("the rest of the devices").  Default: pure data parallel.
    devices: devices to use (default: all, `jax.devices()`).

  Returns:
    a `Mesh` of shape (data, fsdp, tensor).
  """
  shape = dict(shape or {'data': -1})
  unknown = sorted(set(shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f'unknown mesh axes {unknown}; expected a subset of {MESH_AXES}')
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % known:
      raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))}: {n} devices are not divisible by '
                       f'the fixed axes ({known})')
    sizes[sizes.index(-1)] = n // known
  if math.prod(sizes) != n:
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, '
                     f'have {n}')
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def _as_tuple(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  if isinstance(mesh_axes, str):
    return (mesh_axes,)
  return tuple(mesh_axes)


def logical_to_pspec(axes: Sequence[str | None], rules: Rules, mesh: Mesh,
                     shape: Sequence[int] | None = None) -> PartitionSpec:
  """PartitionSpec for one array from its logical axis names.

  Rules are applied in order; a mesh axis is used at most once per array (a
  later dimension that wants it stays unsharded, which also covers repeated
  logical names such as ViT's ('patch', 'patch', ...)).  With `shape` given, a
  dimension not divisible by its mesh axes' size stays unsharded.
  """
  rule_map: dict[str, tuple[str, ...]] = {}
  for name, target in rules:
    rule_map.setdefault(name, _as_tuple(target))
  out: list[Any] = [None] * len(axes)
  used: set[str] = set()
  order = sorted(range(len(axes)),
                 key=lambda i: [r[0] for r in rules].index(axes[i])
                 if axes[i] in rule_map else len(rules))
  for i in order:
    name = axes[i]
    if name is None or name not in rule_map:
      continue
    target = tuple(a for a in rule_map[name] if mesh.shape.get(a, 1) > 1 and a not in used)
    if not target:
      continue
    if shape is not None and shape[i] % math.prod(mesh.shape[a] for a in target):
      continue
    used.update(target)
    out[i] = target[0] if len(target) == 1 else target
  return PartitionSpec(*out)


def fit_rules(rules: Rules, shapes: Any, specs: Any, mesh: Mesh) -> tuple[tuple[str, Any], ...]:
  """Drops the rules that cannot apply to this model on this mesh.

  A logical axis whose size (read from the annotated tree) is not divisible by
  its mesh axes' size is left unsharded, and so is the matching activation
  name ('kv_heads' -> 'act_kv_heads'): e.g. one kv head (MQA) or GPT-2's 50257
  vocab under tensor parallelism.  Logged, so the user sees what was dropped.
  """
  sizes = spec_lib.axis_sizes(shapes, specs)
  out = []
  for name, target in rules:
    base = name[4:] if name.startswith('act_') else name
    axes = tuple(a for a in _as_tuple(target) if mesh.shape.get(a, 1) > 1)
    n = math.prod(mesh.shape[a] for a in axes) if axes else 1
    if base in sizes and sizes[base] % n:
      logging.info('sharding: logical axis %r (size %d) is not divisible by mesh axes %s '
                   '(size %d); leaving %r unsharded', base, sizes[base], axes, n, name)
      out.append((name, None))
    else:
      out.append((name, target))
  return tuple(out)


def tree_pspecs(shapes: Any, specs: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """PartitionSpec tree for an annotated tree (shapes: arrays or ShapeDtypeStructs)."""
  spec_lib.check_tree(shapes, specs, 'shapes')
  return jax.tree.map(lambda s, x: logical_to_pspec(s.axes, rules, mesh, np.shape(x)),
                      specs, shapes, is_leaf=spec_lib.is_spec)


def tree_shardings(shapes: Any, specs: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """NamedSharding tree for an annotated tree; same structure as `shapes`."""
  return jax.tree.map(lambda p: NamedSharding(mesh, p), tree_pspecs(shapes, specs, mesh, rules),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
  """Sharding of a batch array [batch, ...]: leading dim by the 'batch' rule."""
  return NamedSharding(mesh, logical_to_pspec(('batch',) + (None,) * (ndim - 1), rules, mesh))


def batch_divisor(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
  """How many ways the batch dimension is split (global batch must be a multiple)."""
  p = logical_to_pspec(('batch',), rules, mesh)[0]
  return math.prod(mesh.shape[a] for a in _as_tuple(p))


def fit_pspec(shape: Sequence[int], param_shape: Sequence[int], param_pspec: PartitionSpec,
              mesh: Mesh) -> PartitionSpec:
  """The PartitionSpec of a leaf derived from a param (an optimizer statistic of it).

  A leaf of the param's shape (Adam's moments, a momentum trace) takes the
  param's spec.  A leaf of another shape, e.g. Adafactor's factored statistics
  (the param's shape with its last or second-to-last dim dropped) or its (1,)
  placeholders, keeps each mesh axis of the param on the leaf's next dim of the
  same size (dims matched by size, in order), where that size divides; every
  other dim is replicated.

  Args:
    shape: the leaf's shape.
    param_shape: its param's shape.
    param_pspec: the param's PartitionSpec (may be shorter than its rank).
    mesh: the mesh the specs refer to.
  """
  shape, param_shape = tuple(shape), tuple(param_shape)
  if shape == param_shape:
    return param_pspec
  entries = tuple(param_pspec) + (None,) * (len(param_shape) - len(param_pspec))
  out: list[Any] = [None] * len(shape)
  nxt = 0
  for size, axes in zip(param_shape, entries):
    k = next((k for k in range(nxt, len(shape)) if shape[k] == size), None)
    if k is None:
      continue
    nxt = k + 1
    if axes is not None and size % math.prod(mesh.shape[a] for a in _as_tuple(axes)) == 0:
      out[k] = axes
  return PartitionSpec(*out)


def like_params(tree: Any, params_shardings: Any, default: NamedSharding,
                params_shapes: Any) -> Any:
  """Shardings for a tree (e.g. an optax state) whose subtrees mirror the params, leaf by leaf.

  Every subtree with the params' tree structure (Adam's mu and nu, a momentum
  trace, Adafactor's v_row / v_col / v, muP per-leaf states, accumulated
  gradients) is paired with the params leaf by leaf, and each leaf gets
  `fit_pspec` of its param: the param's sharding where the shapes agree,
  otherwise the param's mesh axes on the dims the leaf kept (where they divide),
  else replicated.  Every other leaf (step counts, scalars) gets `default`.

  Args:
    tree: arrays or ShapeDtypeStructs (e.g. `jax.eval_shape(tx.init, params)`).
    params_shardings: NamedSharding tree of the params.
    default: sharding of the leaves outside the params-shaped subtrees.
    params_shapes: the params (arrays or ShapeDtypeStructs), same tree.

  Returns:
    a NamedSharding tree with `tree`'s structure.
  """
  ptree = jax.tree.structure(params_shardings)
  if jax.tree.structure(params_shapes) != ptree:
    raise ValueError('like_params: params_shapes and params_shardings have different trees')

  def is_param_tree(x):
    try:
      return jax.tree.structure(x) == ptree
    except Exception:  # pylint: disable=broad-except
      return False

  def fit(x, sh, p):
    return NamedSharding(sh.mesh, fit_pspec(np.shape(x), np.shape(p), sh.spec, sh.mesh))

  def one(x):
    if is_param_tree(x):
      return jax.tree.map(fit, x, params_shardings, params_shapes)
    return default

  return jax.tree.map(one, tree, is_leaf=is_param_tree)


def sharded_init(init_fn: Callable[..., Any], rng: jax.Array, out_shardings: Any) -> Any:
  """Runs `init_fn(rng)` under jit with `out_shardings`: each device only ever
  holds its own shards (nothing is materialised whole on one device)."""
  return jax.jit(init_fn, out_shardings=out_shardings)(rng)


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Sets the mesh and the logical rules for `nn.with_logical_constraint`.

  Trace jitted model code inside this context so the models' activation
  constraints ('batch', 'act_mlp', ...) take effect.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield


def describe(shardings: Any) -> dict[str, str]:
  """{'path': 'PartitionSpec(...)'} for logging and tests."""
  return {k: str(v.spec) for k, v in spec_lib.flatten(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding)).items()}
