"""Optimizers and learning-rate schedules built from a config.

    tx, schedule = optim.make_optimizer(config.optimizer, total_steps, specs)

The optax chain is, in order:

    clip_by_global_norm -> scale_by_adam | trace (momentum) -> add_decayed_weights
      -> [per-leaf lr multipliers] -> scale_by_learning_rate(schedule)

so AdamW here is exactly `optax.adamw` (decoupled decay, multiplied by the
learning rate).  The per-leaf multipliers are the seam for muP: a tree of
floats (same structure as the params) that scales each leaf's update, e.g.
1/m for hidden matrices under Adam.  A whole optimizer can also be swapped:
`train_and_evaluate(..., optimizer=fn)` with `fn(config, specs, schedule)`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hyperinit import spec as spec_lib

OPTIMIZERS = ('adamw', 'adam', 'sgd')
SCHEDULES = ('cosine', 'linear', 'constant')


def make_schedule(opt: Any, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `opt.learning_rate`, then cosine / linear decay
  to `opt.min_lr_ratio * learning_rate` at `opt.decay_steps` (default: the
  total number of steps), or constant."""
  if opt.schedule not in SCHEDULES:
    raise ValueError(f'optimizer.schedule={opt.schedule!r}; expected one of {SCHEDULES}')
  peak = float(opt.learning_rate)
  warmup = int(opt.warmup_steps)
  decay_steps = int(opt.get('decay_steps') or total_steps)
  end = peak * float(opt.min_lr_ratio)
  if warmup < 0 or (opt.schedule != 'constant' and decay_steps <= warmup):
    raise ValueError(f'need 0 <= warmup_steps ({warmup}) < decay_steps ({decay_steps})')
  if opt.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay_steps, end)
  if opt.schedule == 'linear':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup),
         optax.linear_schedule(peak, end, decay_steps - warmup)], [warmup])
  if warmup == 0:
    return optax.constant_schedule(peak)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])


def decay_mask(specs: Any = None, params: Any = None) -> Any:
  """True for leaves that get weight decay: matrices and embeddings.

  From the annotation when given (a leaf with fan-in axes that is not a norm
  parameter), else by rank (>= 2) of `params`.  Biases, norm gains and the
  ViT class token are never decayed.
  """
  if specs is not None:
    return jax.tree.map(lambda s: bool(s.fan_in) and s.role not in ('norm', 'final_norm'),
                        specs, is_leaf=spec_lib.is_spec)
  if params is None:
    raise ValueError('decay_mask needs specs or params')
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


class ScaleByTreeState(NamedTuple):
  pass


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
  """Multiplies each leaf's update by a constant from `multipliers` (same tree)."""
  def init(params):
    del params
    return ScaleByTreeState()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(init, update)


def _check_name(opt: Any) -> None:
  if opt.name not in OPTIMIZERS:
    raise ValueError(f'optimizer.name={opt.name!r}; expected one of {OPTIMIZERS}')


def make_optimizer(opt: Any, total_steps: int, specs: Any = None, *,
                   lr_multipliers: Any = None,
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """An optax transformation and its learning-rate schedule.

  Args:
    opt: the `config.optimizer` ConfigDict (name, learning_rate, schedule,
      warmup_steps, min_lr_ratio, b1, b2, eps, momentum, nesterov,
      weight_decay, grad_clip_norm).
    total_steps: training length (the default end of the decay).
    specs: ParamSpec tree of the params (selects the weight-decay leaves).
    lr_multipliers: optional tree of per-leaf update multipliers (muP).

  Returns:
    (tx, schedule): `tx.update(grads, state, params)` as usual; `schedule(step)`
    is the peak-scaled learning rate, for logging.
  """
  _check_name(opt)
  schedule = make_schedule(opt, total_steps)
  leaf_scale = None if lr_multipliers is None else scale_by_tree(lr_multipliers)
  return build_chain(opt, specs, schedule, leaf_scale=leaf_scale), schedule


def build_chain(opt: Any, specs: Any, schedule: optax.Schedule, *,
                leaf_scale: optax.GradientTransformation | None = None,
                adam: optax.GradientTransformation | None = None,
                leaf_scale_before_decay: bool = False) -> optax.GradientTransformation:
  """The trainer's optimizer chain (one definition, shared with muP):

      clip_by_global_norm -> [adam/sgd: coupled L2] -> scale_by_adam | trace
        -> [adamw: decoupled decay] -> [leaf_scale] -> scale_by_learning_rate

  Args:
    opt: `config.optimizer` (see `make_optimizer`).
    specs: ParamSpec tree (selects the weight-decay leaves).
    schedule: the learning-rate schedule.
    leaf_scale: optional per-leaf update scaling (muP factors, `scale_by_tree`).
    adam: replaces `optax.scale_by_adam(b1, b2, eps)` (e.g. muP's per-leaf eps).
    leaf_scale_before_decay: put `leaf_scale` before AdamW's decoupled decay, so
      the decay is not scaled (muP's width-invariant decay).
  """
  _check_name(opt)
  wd = float(opt.weight_decay)
  mask = (lambda p: decay_mask(specs, p)) if wd else None
  parts: list[optax.GradientTransformation] = []
  if opt.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
  if opt.name in ('adam', 'sgd') and wd:
    parts.append(optax.add_decayed_weights(wd, mask))   # coupled L2
  if opt.name in ('adamw', 'adam'):
    parts.append(adam or optax.scale_by_adam(b1=float(opt.b1), b2=float(opt.b2),
                                             eps=float(opt.eps)))
  elif opt.momentum:
    parts.append(optax.trace(decay=float(opt.momentum), nesterov=bool(opt.nesterov)))
  scale = [] if leaf_scale is None else [leaf_scale]
  if opt.name == 'adamw' and wd:
    decay = [optax.add_decayed_weights(wd, mask)]   # decoupled (AdamW)
    parts += scale + decay if leaf_scale_before_decay else decay + scale
  else:
    parts += scale
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


OptimizerFactory = Callable[[Any, Any, optax.Schedule], optax.GradientTransformation]
