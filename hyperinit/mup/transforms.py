"""Per-leaf static scaling of params-shaped trees, and the optax transforms built on it.

One representation of per-leaf factors: a path-keyed mapping of Python floats,
{'block_0/mlp/wi/kernel': 0.5, ...} (`spec.path_str` keys), which is what muP's
multipliers produce and what survives JSON, FrozenDict and sharding untouched.
A params-shaped tree of floats (e.g. {'w': 0.5, 'b': {'x': 1.0}}) is accepted
everywhere and converted at the boundary by `leaf_factors`.

The factors are static: nothing rides on the arrays, so a jitted, sharded
update needs nothing special, and a factor of exactly 1.0 returns the leaf
itself (so muP at base width is bit-identical to plain optax).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from hyperinit import spec as spec_lib

Factors = Mapping[str, float]


def leaf_factors(factors: Any) -> dict[str, float]:
  """Per-leaf factors as {path: float}, from a path-keyed mapping or a params-shaped tree.

  `spec.flatten` of a flat {'a/b': x} mapping is the mapping itself, so both
  representations go through the same conversion.
  """
  return {k: float(v) for k, v in spec_lib.flatten(factors).items()}


def lookup(table: Factors, path, what: str = 'factor') -> float:
  """table[path_str(path)], with a KeyError naming the leaf when it is missing."""
  key = spec_lib.path_str(path)
  if key not in table and key.endswith('/value') and key[:-len('/value')] in table:
    key = key[:-len('/value')]      # an NNX Variable's array (nnx.Optimizer's trees)
  try:
    return table[key]
  except KeyError:
    raise KeyError(f'no muP {what} for leaf {key!r}: the factors were built for another '
                   f'parameter tree (e.g. {sorted(table)[:3]})') from None


def scale_leaves(tree: Any, factors: Any, what: str = 'factor') -> Any:
  """Each leaf times its static factor; pure and jittable.

  Args:
    tree: any pytree of arrays (params or updates), leaf x [any shape].
    factors: {path: float} or a tree of floats shaped like `tree` (see
      `leaf_factors`); every leaf of `tree` needs one.
    what: names the factors in the KeyError for a missing leaf.

  Returns:
    The same tree, leaf x at path p -> x * factors[p] in x's dtype; factor 1.0
    returns x itself and 0.0 exact zeros (even for non-finite x).
  """
  table = leaf_factors(factors)

  def one(path, x):
    f = lookup(table, path, what)
    if f == 1.0:
      return x
    return jnp.zeros_like(x) if f == 0.0 else x * jnp.asarray(f, x.dtype)
  return jax.tree_util.tree_map_with_path(one, tree)


def scale_per_leaf(factors: Any, what: str = 'scale') -> optax.GradientTransformation:
  """optax transform: updates -> `scale_leaves(updates, factors)` (stateless).

  `factors`: {path: float} or a params-shaped tree of floats, e.g. muP's
  `factor_table(mults)` or HyperCloning's `update_multipliers(plan)`.
  """
  table = leaf_factors(factors)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return scale_leaves(updates, table, what), state

  return optax.GradientTransformation(init_fn, update_fn)


def add_decayed_weights_per_leaf(rate: float, factors: Any = None,
                                 mask: Any = None) -> optax.GradientTransformation:
  """optax transform: updates + rate * factors[path] * params (coupled L2 with per-leaf rates).

  Args:
    rate: the base decay rate (a float; schedules are not supported here).
    factors: {path: float} or a params-shaped tree of floats, or None (all 1).
      With every factor 1 (or None) this *is* `optax.add_decayed_weights(rate,
      mask)`, so updates stay bit-identical to optax's.
    mask: which leaves decay (tree of bools or a callable), as in optax.
  """
  table = None if factors is None else leaf_factors(factors)
  if table is None or set(table.values()) <= {1.0}:
    return optax.add_decayed_weights(rate, mask)
  if callable(rate):
    raise TypeError('add_decayed_weights_per_leaf needs a float rate, not a schedule')

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('add_decayed_weights_per_leaf needs params: call tx.update(grads, '
                       'state, params)')

    def one(path, g, p):
      r = rate * lookup(table, path, 'weight-decay factor')
      return g if r == 0.0 else g + jnp.asarray(r, p.dtype) * p
    return jax.tree_util.tree_map_with_path(one, updates, params), state

  tx = optax.GradientTransformation(init_fn, update_fn)
  return tx if mask is None else optax.masked(tx, mask)


def scale_by_adam_leaf_eps(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                  mu_dtype: Any = None, *, nesterov: bool = False,
                  eps_scales: Any = None) -> optax.GradientTransformation:
  """`optax.scale_by_adam` with a per-leaf epsilon eps * eps_scales[path].

  Named apart from optax's transform because it takes one more argument (and
  is muP's: `eps_scales` = `optim.eps_multipliers`).  Same state (`optax.ScaleByAdamState`) and, at eps_scales == 1, the same
  arithmetic as optax, so updates are bit-identical there; eps_scales=None is
  optax's transform itself.
  """
  if eps_scales is None:
    return optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)
  eps_scales = leaf_factors(eps_scales)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    mu = optax.tree.zeros_like(params, dtype=mu_dtype)
    nu = optax.tree.zeros_like(params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count_inc = optax.safe_increment(state.count)
    if nesterov:
      mu_hat = jax.tree.map(
          lambda m, g: b1 * m + (1 - b1) * g,
          optax.tree.bias_correction(mu, b1, optax.safe_increment(count_inc)),
          optax.tree.bias_correction(updates, b1, count_inc))
    else:
      mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
    nu_hat = optax.tree.bias_correction(nu, b2, count_inc)

    def one(path, m, v):
      e = eps * lookup(eps_scales, path, 'epsilon multiplier')
      return m / (jnp.sqrt(v + eps_root) + e)
    updates = jax.tree_util.tree_map_with_path(one, mu_hat, nu_hat)
    mu = optax.tree.cast(mu, mu_dtype)
    nu = optax.tree.cast_like(nu, state.nu)
    return updates, optax.ScaleByAdamState(count=count_inc, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
