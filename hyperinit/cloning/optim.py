"""Widening optimizer state with the parameters, so a run can be widened mid-training.

How gradients of a clone relate to the source's.  Every widened activation is
`[y, ..., y]` and the downstream network is a clone, so the loss as a function
of one activation is L_D(tile(y)) = L_S(y); by the symmetry of the copies each
copy's gradient is dL/dy / n.  A leaf whose destination blocks are
`B = scale * W / N_in` (N_in = #fan-in blocks, `scale` the query / tied-norm
factor) therefore gets, in every block (zero blocks of a diagonal clone too),

    g_D = tile(g_S) * s,        s = 1 / (scale * N_out)      (N_out = #fan-out blocks)

e.g. s = 1/n for a hidden kernel, an embedding, a bias or a norm gain, and
s = 1 for the final norm of a tied model (whose gain was divided by n).  The
weight rule (divide by N_in) and the gradient rule (divide by N_out) differ.

Adam's moments follow the gradient: mu_D = tile(mu_S) * s, nu_D = tile(nu_S) *
s^2, so the clone's next Adam direction is mu/(sqrt(nu) + eps/s) ~= tile(u_S) in
every block (exact with eps scaled by s).  Plain Adam then moves each block by
lr * u_S, while staying a clone needs lr * u_S * scale / N_in.  Multiplying
the Adam direction by `update_multipliers(plan)` (before weight decay) makes the
widened run continue *exactly* as the source would, for the symmetric and the
diagonal variants alike (each row's blocks still sum to the updated W); this is
muP's hidden-layer Adam rule (lr / fan_in multiplier).  Without it (standard
parametrisation, as the HyperCloning paper trains) the moments are still the
right ones; the update is just n times larger relative to the divided weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from hyperinit import spec as spec_lib
from hyperinit.cloning import plan as plan_lib
from hyperinit.cloning import widen

# Fields of optax states that hold per-parameter moments, and the power of the
# gradient they scale with.
MOMENT_POWERS = {'mu': 1, 'nu': 2, 'nu_max': 2, 'trace': 1}


def grad_scale(lp: plan_lib.LeafPlan) -> float:
  """s = 1 / (scale * N_out): destination gradient block = s * source gradient."""
  n_out = lp.n_blocks // lp.n_in
  return 1.0 / (lp.scale * n_out)


def widen_like_gradient(tree: Any, plan: plan_lib.ClonePlan, power: int = 1) -> dict[str, Any]:
  """Widens a params-shaped tree of gradient-like values (tile * s**power).

  Leaves the destination has but the source lacks (an untied readout) are zero.
  """
  flat = spec_lib.flatten(tree)
  out = {}
  for lp in plan.leaves:
    if lp.perm is not None or lp.src != lp.path:  # a new leaf (untied readout)
      out[lp.path] = jnp.zeros(lp.dst_shape, flat[lp.src].dtype)
      continue
    s = grad_scale(lp) ** power
    tiled = dataclasses.replace(lp, scale=s * lp.n_in)   # build_leaf divides by N_in
    out[lp.path] = widen.build_leaf(flat[lp.src], tiled, 'symmetric')
  return spec_lib.unflatten(out)


def _param_paths(plan: plan_lib.ClonePlan) -> set[str]:
  return {lp.src for lp in plan.leaves if lp.perm is None}


def _is_param_tree(node: Any, paths: set[str]) -> bool:
  if not isinstance(node, dict):
    return False
  try:
    return set(spec_lib.flatten(node)) == paths
  except Exception:  # pylint: disable=broad-except
    return False


def widen_opt_state(opt_state: Any, plan: plan_lib.ClonePlan) -> Any:
  """The optimizer state of the clone, from the source run's state.

  Walks an optax state (chains, inject_hyperparams, masked ...) and widens every
  per-parameter moment field ('mu', 'nu', 'nu_max', 'trace') by the gradient
  rule; counts and hyper-parameters are kept, so bias correction and schedules
  continue.  Raises ValueError for a params-shaped field it does not know how
  to widen (naming the state type and field) rather than guessing.
  """
  paths = _param_paths(plan)

  def walk(node, where):
    if _is_param_tree(node, paths):
      raise ValueError(f'optimizer state field {where} holds per-parameter values of unknown '
                       f'meaning; known moment fields: {sorted(MOMENT_POWERS)}')
    if hasattr(node, '_fields'):  # NamedTuple optax state
      vals = {}
      for name in node._fields:
        v = getattr(node, name)
        here = f'{type(node).__name__}.{name}'
        if name in MOMENT_POWERS and _is_param_tree(v, paths):
          vals[name] = widen_like_gradient(v, plan, MOMENT_POWERS[name])
        else:
          vals[name] = walk(v, here)
      return type(node)(**vals)
    if isinstance(node, (tuple, list)):
      return type(node)(walk(v, f'{where}[{i}]') for i, v in enumerate(node))
    if isinstance(node, dict):
      return {k: walk(v, f'{where}.{k}') for k, v in node.items()}
    return node

  return walk(opt_state, 'opt_state')


def update_multipliers(plan: plan_lib.ClonePlan) -> dict[str, float]:
  """Per-leaf factors scale / N_in for the Adam direction (see module doc), {path: float}.

  Leaves created by the clone (an untied readout) get 1.  Pass them to the one
  per-leaf transform, placed after the direction and before weight decay:
  `mup.scale_per_leaf(update_multipliers(plan))`, or
  `mup.make_optimizer(kind, lr, lr_factors=update_multipliers(plan), ...)`.
  """
  return {lp.path: 1.0 if lp.perm is not None else lp.scale / lp.n_in for lp in plan.leaves}
