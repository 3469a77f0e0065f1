"""A user's own Flax model, linen or NNX, to `(params, specs)`: one call.

    params, specs = hyperinit.from_flax(MyLinenModel(), tokens)       # linen: runs model.init
    params, specs = hyperinit.from_flax(my_nnx_model)                  # NNX: reads its Params
    wide = cloning.clone(params, specs, {'embed': 2, 'mlp': 2}, rng=0)
    big = hyperinit.into_nnx(lambda: MyNnxModel(width=2 * w, rngs=nnx.Rngs(0)), wide)

The model declares its logical axes as it does for sharding
(`nn.with_logical_partitioning` / `nnx.with_partitioning`), optionally with a
fan-in and a role beside them (`spec.with_axes(init, axes, fan_in=, role=)` for
linen; `nnx.with_partitioning(init, axes, fan_in=, role=)` for NNX).  The rest
is inferred (`spec.complete_specs`: a bias takes its kernel's output axes, a
kernel's fan-in is what its bias lacks; `spec.infer_roles`: the readout maps to
'vocab'/'classes', the embedding is indexed by 'vocab') and every inference can
be overridden by path (`axes=`, `fan_in=`, `roles=`, exact paths or fnmatch
patterns such as 'layers/*/mlp/bias').

NNX on flax >= 0.12 shards a variable eagerly when it is created with a
partitioning annotation and fails with no mesh; `build_nnx` / `into_nnx` build
a module with that off unless a mesh is set (`jax.set_mesh`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from hyperinit import spec as spec_lib

# NNX variable metadata keys holding the logical axes (flax 0.12: out_sharding; older names).
_NNX_AXES_KEYS = ('out_sharding', 'sharding_names', 'sharding')


def as_key(rng: jax.Array | int) -> jax.Array:
  """A typed PRNG key from a key (typed or raw uint32 [2]) or an int seed (traced ones too)."""
  if hasattr(rng, 'dtype') and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng
  if np.ndim(rng) == 0:
    return jax.random.key(rng)
  return jax.random.wrap_key_data(rng)


def from_flax(model: Any, *example_inputs: Any, rng: jax.Array | int = 0,
              roles: Mapping[str, str] | None = None,
              fan_in: Mapping[str, tuple[int, ...]] | None = None,
              axes: Mapping[str, tuple[str | None, ...]] | None = None,
              abstract: bool = False, **init_kwargs: Any) -> tuple[Any, Any]:
  """(params, specs) of a user's Flax model, linen or NNX.

  Args:
    model: a linen `nn.Module` (initialised here on `example_inputs`), its
      variables as `model.init` or `jax.eval_shape(model.init, ...)` return them
      (boxed), an `nnx.Module`, or an `nnx.State`.
    *example_inputs: inputs of a linen model's `init` (e.g. tokens [B, T]).
    rng: PRNG key or int seed for a linen model's init.
    roles: {path or pattern: role} declared or overriding the inferred roles
      ('' removes one), e.g. {'decoder/kernel': 'readout'}.
    fan_in: {path or pattern: fan-in dims} overriding the declared / inferred ones.
    axes: {path or pattern: logical axes} for leaves the model left unannotated.
    abstract: for a linen model, shapes only (`jax.eval_shape`; params come back
      as ShapeDtypeStructs), e.g. to plan a clone of a model too big to init here.
    **init_kwargs: extra keyword arguments of `model.init` (e.g. train=False).

  Returns:
    params: the 'params' collection as plain arrays in nested dicts (linen:
      as `model.apply` takes it; NNX: `nnx.to_pure_dict` of its `nnx.Param`s with
      str keys, as `into_nnx` takes it).
    specs: a `ParamSpec` per leaf, the same tree (see `hyperinit.spec`).

  Raises:
    TypeError naming the leaves whose axes are neither declared nor inferable;
    ValueError for an override path that matches no leaf.
  """
  if isinstance(model, nnx.Module):
    model = nnx.state(model, nnx.Param)
  if isinstance(model, nnx.State):
    # String keys throughout (an nnx.List's layers are '0', '1', ...), as `cloning.clone`
    # returns them; `into_nnx` / `nnx.replace_by_pure_dict` map them back.
    params = spec_lib.unflatten(spec_lib.flatten(nnx.to_pure_dict(model)))
    partial = {spec_lib.path_str(p): _nnx_partial(v) for p, v in nnx.to_flat_state(model)}
  else:
    variables = model
    if isinstance(model, nn.Module):
      init = lambda key, *xs: model.init(key, *xs, **init_kwargs)
      run = jax.eval_shape if abstract else lambda f, *a: f(*a)
      variables = run(init, as_key(rng), *example_inputs)
    elif example_inputs or init_kwargs:
      raise TypeError(f'from_flax got example inputs but no linen module to init '
                      f'(got {type(model).__name__})')
    boxed = variables['params'] if _has_params_collection(variables) else variables
    params = spec_lib.unbox(boxed)
    partial = {p: spec_lib.partial_from_box(x)
               for p, x in spec_lib.flatten(boxed, is_leaf=spec_lib.is_box).items()}
  partial = _override(partial, axes, 'axes', lambda l, v: dataclasses.replace(l, axes=tuple(v)))
  partial = _override(partial, fan_in, 'fan_in',
                      lambda l, v: dataclasses.replace(l, fan_in=tuple(v)))
  flat = spec_lib.complete_specs(partial)
  specs = spec_lib.infer_roles(
      jax.tree_util.tree_map_with_path(lambda p, _: flat[spec_lib.path_str(p)], params))
  flat_roles = _override(spec_lib.flatten(specs, is_leaf=spec_lib.is_spec), roles, 'roles',
                         lambda s, r: dataclasses.replace(s, role=r))
  specs = jax.tree_util.tree_map_with_path(lambda p, _: flat_roles[spec_lib.path_str(p)], params)
  # ParamSpec validates each role; re-check ranks against the values once more.
  spec_lib.check_tree(params, specs)
  return params, specs


def _has_params_collection(variables: Any) -> bool:
  return isinstance(variables, Mapping) and 'params' in variables and \
      isinstance(variables['params'], Mapping)


def _nnx_partial(var: Any) -> spec_lib.Partial:
  meta = var.get_metadata() if hasattr(var, 'get_metadata') else {}
  names = next((meta[k] for k in _NNX_AXES_KEYS if meta.get(k)), None)
  fan_in = meta.get('fan_in')
  return spec_lib.Partial(spec_lib.shape_of(var.get_value()),
                          None if names is None else tuple(names),
                          None if fan_in is None else tuple(fan_in), meta.get('role', ''))


def _override(flat: dict[str, Any], overrides: Mapping[str, Any] | None, what: str,
              replace: Callable[[Any, Any], Any]) -> dict[str, Any]:
  """`flat` with `replace(leaf, value)` applied where a key of `overrides` names the path
  (exactly, or as an fnmatch pattern); a key that names no leaf is an error."""
  if not overrides:
    return flat
  out = dict(flat)
  for key, value in overrides.items():
    hits = [key] if key in flat else [p for p in flat if fnmatch.fnmatchcase(p, key)]
    if not hits:
      raise ValueError(f'{what}={{{key!r}: ...}} names no parameter; the leaves are '
                       f'{sorted(flat)[:12]}{" ..." if len(flat) > 12 else ""}')
    for p in hits:
      out[p] = replace(out[p], value)
  return out


def build_nnx(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
  """`factory(*args, **kwargs)` (an NNX module) built so partitioning annotations need no mesh.

  flax >= 0.12 shards each annotated variable at creation and raises without a
  mesh; with no mesh set this builds with eager sharding off (the values stay
  on the default device, the annotations stay in the metadata).  Under
  `jax.set_mesh(mesh)` it builds as Flax would.
  """
  if not jax.sharding.get_abstract_mesh().empty or not hasattr(nnx, 'use_eager_sharding'):
    return factory(*args, **kwargs)
  with nnx.use_eager_sharding(False):
    return factory(*args, **kwargs)


def into_nnx(module: Any, params: Any) -> Any:
  """An NNX module holding `params` (a pure dict as `from_flax` returns for NNX).

  Args:
    module: an NNX module of the params' sizes (e.g. the wider model a clone was
      made for), or a zero-argument factory building it.  A factory is first
      traced abstractly (`nnx.eval_shape`: no random init of the wide model) and
      built for real (`build_nnx`) only when it holds state other than Params
      (e.g. an `nnx.Rngs` for dropout) that the params cannot supply.
    params: nested dict {.. : array}, the tree of `nnx.to_pure_dict` of the
      module's Params; every leaf must have the module's shape.

  Returns:
    A new module (`nnx.merge`) whose Params are `params`; other state (batch
    stats, rng state) is the module's own.

  Raises:
    ValueError naming the first leaf missing, extra or of the wrong shape.
  """
  if not isinstance(module, nnx.Module):
    factory = module
    module = build_nnx(nnx.eval_shape, factory)
    if any(isinstance(x, jax.ShapeDtypeStruct)
           for x in jax.tree.leaves(nnx.state(module, nnx.Not(nnx.Param)))):
      module = build_nnx(factory)
  graph, state, rest = nnx.split(module, nnx.Param, ...)
  want = {spec_lib.path_str(p): spec_lib.shape_of(v.get_value())
          for p, v in nnx.to_flat_state(state)}
  got = {p: spec_lib.shape_of(v) for p, v in spec_lib.flatten(params).items()}
  if set(want) != set(got):
    raise ValueError(f'params do not match the module\'s Params: missing '
                     f'{sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}')
  bad = [f'{p!r} has shape {got[p]}, the module wants {s}' for p, s in want.items() if got[p] != s]
  if bad:
    raise ValueError(f'params do not fit the module ({len(bad)} leaves): ' + '; '.join(bad[:5]))
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graph, state, rest)


__all__ = ['as_key', 'build_nnx', 'from_flax', 'into_nnx']
