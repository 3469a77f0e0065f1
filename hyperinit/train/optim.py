"""The trainer's optimizer from its config: `config.optimizer` -> (tx, schedule).

    tx, schedule = optim.from_config(config.optimizer, total_steps, specs)          # SP
    tx, schedule = optim.from_config(config.optimizer, total_steps, specs, mults,   # muP
                                     wd_mode=..., eps_mode=...)

Only config parsing lives here; the chain is `hyperinit.mup.make_optimizer`:

    clip_by_global_norm -> [adam/sgd: coupled L2] -> scale_by_adam | trace (momentum)
      -> [adamw: decoupled decay, per-leaf factors in wd_mode's order] -> scale_by_learning_rate

`optimizer.weight_decay` means what torch's optimizer of that name does with
it: decoupled for adamw (exactly `optax.adamw`), coupled L2 for adam and sgd;
under muP `wd_mode` says whether the decay follows the per-leaf factors (the
table in docs/mup.md maps each case to microsoft/mup's MuAdamW / MuAdam /
MuSGD).  A whole optimizer can also be swapped:
`train_and_evaluate(..., optimizer=fn)` with `fn(config, specs, schedule)`.
"""

from __future__ import annotations

from typing import Any, Callable

import optax

from hyperinit import mup
from hyperinit.mup.optim import decay_mask  # re-exported: the trainer's weight-decay leaves

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


def from_config(opt: Any, total_steps: int, specs: Any = None,
                mults: mup.Multipliers | None = None, *, lr_factors: Any = None,
                wd_mode: str = 'follows_lr', eps_mode: str = 'all'
                ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """An optax transformation and its learning-rate schedule, via `mup.make_optimizer`.

  Args:
    opt: the `config.optimizer` ConfigDict (name, learning_rate, schedule,
      warmup_steps, min_lr_ratio, b1, b2, eps, momentum, nesterov,
      weight_decay, grad_clip_norm).  weight_decay is decoupled for adamw and
      coupled L2 for adam and sgd; 0 turns decay (and grad_clip_norm 0 clipping) off.
    total_steps: training length (the default end of the decay).
    specs: ParamSpec tree of the params (selects the weight-decay leaves).
    mults: muP multipliers, or None (standard parametrisation).
    lr_factors: extra per-leaf update factors ({path: float} or a params-shaped
      tree of floats).
    wd_mode: whether the decay follows the per-leaf factors ('follows_lr':
      per-step decay lr * s * wd, as a per-leaf learning rate would give;
      'fixed': lr * wd; muP runs pass `config.mup.wd_mode`, default 'fixed').
    eps_mode: muP's Adam epsilon scaling (`config.mup.eps_mode`).

  Returns:
    (tx, schedule): `tx.update(grads, state, params)` as usual; `schedule(step)`
    is the peak-scaled learning rate, for logging.
  """
  if opt.name not in OPTIMIZERS:
    raise ValueError(f'optimizer.name={opt.name!r}; expected one of {OPTIMIZERS}')
  schedule = make_schedule(opt, total_steps)
  wd = float(opt.weight_decay) or None
  # weight_decay is each builder's own: decoupled for adamw, coupled L2 for adam and sgd.
  kw: dict[str, Any] = dict(
      grad_clip=float(opt.grad_clip_norm) or None, lr_factors=lr_factors, wd_mode=wd_mode,
      weight_decay=wd, mask=(lambda p: decay_mask(specs, p)) if wd else None)
  if opt.name in ('adamw', 'adam'):
    kw.update(b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps), eps_mode=eps_mode)
  else:
    kw.update(momentum=float(opt.momentum) or None, nesterov=bool(opt.nesterov))
  return mup.make_optimizer(opt.name, schedule, mults, **kw), schedule


OptimizerFactory = Callable[[Any, Any, optax.Schedule], optax.GradientTransformation]
