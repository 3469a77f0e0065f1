"""Hooks for `loop.run_loop`: what happens around the steps of a training loop.

    guard = hooks.NonFiniteGuard(lambda m: m['loss'], lambda a, b: f'NaN in steps {a}..{b}')
    log = hooks.Log(100, ('loss',), units_per_step=B * T, unit='tokens', guard=guard)
    ev = hooks.Eval(lambda state: evaluate(state.params), every=1000)
    save = hooks.Checkpoint(ckpt, data_iter, guard=guard)     # a checkpoint.Checkpointer
    loop.run_loop(state, step_fn, [guard, log, ev, save], start=start, total=total,
                  workdir=workdir)
    log.scalars, ev.scalars                                 # the last logged train / eval means

A hook sees the run through a `Loop` (the current state, step, whether this is
the last step or a SIGTERM stop, the metrics writer).  Within a step, hooks run
in list order, after the step and after the preemption flag is read, so every
process agrees on `loop.preempted` before anything is saved.  Order matters
(and is what model training and GHN meta-training both use): guard, log, eval,
checkpoint, profile.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hyperinit.train import metrics as metrics_lib


@dataclasses.dataclass
class Loop:
  """What hooks see of a running loop (updated by `run_loop` every step).

  Attributes:
    state: the current state (whatever `step_fn` takes and returns).
    start: the step the run started from (0, or the restored step).
    stop: the last step this call runs (`total` unless time-sliced).
    total: the run's full number of steps (evaluation "at the end" means here).
    writer: the run's `metrics.MetricsWriter` (metrics.jsonl + TensorBoard).
    step: the step just run (`start` before the first).
    preempted: SIGTERM was received (agreed by all processes) at this step.
  """
  state: Any
  start: int
  stop: int
  total: int
  writer: metrics_lib.MetricsWriter
  step: int = 0
  preempted: bool = False

  @property
  def last(self) -> bool:
    """Whether the step just run is the last of this call."""
    return self.step == self.stop


class Hook:
  """Base class: every method is a no-op.

  `begin` runs once before the first step, `before_step` / `after_step`
  around every step, `end` after the last step (or a SIGTERM stop) and
  `close` always, also after an error (release files, threads).
  """

  def begin(self, loop: Loop) -> None:
    pass

  def before_step(self, loop: Loop, step: int) -> None:
    pass

  def after_step(self, loop: Loop, step: int, metrics: Mapping[str, Any]) -> None:
    pass

  def end(self, loop: Loop) -> None:
    pass

  def close(self) -> None:
    pass


class NonFiniteGuard(Hook):
  """Sums `value_fn(metrics)` on device every step; `check(step)` raises if it is not finite.

  The sum stays on device between checks (no host sync per step); `Log`
  checks before each log row and `Checkpoint` before each save (when given
  this guard), so a non-finite state is never logged as fine or saved.

  Args:
    value_fn: metrics -> scalar array [] (e.g. loss + grad_norm).
    message: (first step, step) -> the FloatingPointError's text, for the
      steps first..step since the previous check; called at the error only.
  """

  def __init__(self, value_fn: Callable[[Mapping[str, Any]], Any],
               message: Callable[[int, int], str]):
    self.value_fn, self.message = value_fn, message
    self._sum, self._checked = None, 0

  def begin(self, loop: Loop) -> None:
    self._sum, self._checked = None, loop.start

  def after_step(self, loop: Loop, step: int, metrics: Mapping[str, Any]) -> None:
    v = self.value_fn(metrics)
    self._sum = v if self._sum is None else self._sum + v

  def check(self, step: int) -> None:
    if self._sum is not None and not np.isfinite(float(self._sum)):
      raise FloatingPointError(self.message(self._checked + 1, step))
    self._sum, self._checked = None, step


class Log(Hook):
  """Window means of the step metrics every `every` steps (and at the run's last step).

  Each row goes to the log as the progress line ('step 100/1000 | loss 2.31 |
  5.2 steps/s | 42000 tokens/s | ETA 2:53', `metrics.Progress`) and to the
  writer as split 'train' with the means, 'learning_rate' (with `schedule`),
  'steps_per_sec' and '<unit>_per_sec'.

  At a stop that is not a row step (SIGTERM, the end of a time slice) the open
  window is either written as a row, or, when a `Checkpoint` hook carries it
  (`Checkpoint(..., log=this)`), saved with the checkpoint and continued on resume
  (`window=`), so a resumed run writes exactly the rows of an uninterrupted one.

  Args:
    every: log period in steps.
    line_keys: metrics shown on the progress line (all are written).
    units_per_step: examples or tokens per step, for the throughput.
    unit: 'tokens', 'examples', 'archs', ...
    schedule: optional learning-rate schedule; the row's 'learning_rate' is
      `schedule(step - 1)` (the rate the step's update used).
    guard: a `NonFiniteGuard` checked before each row.
    window: a `window_state()` saved with the checkpoint the run resumes from
      (used when its step is the loop's start).

  Attributes:
    scalars: the last row written ({} before the first).
  """

  def __init__(self, every: int, line_keys: tuple[str, ...], units_per_step: int, unit: str,
               schedule: Callable[[int], Any] | None = None,
               guard: NonFiniteGuard | None = None, window: Mapping[str, Any] | None = None):
    self.every, self.line_keys = int(every), tuple(line_keys)
    self.units_per_step, self.unit = units_per_step, unit
    self.schedule, self.guard = schedule, guard
    self.scalars: dict[str, float] = {}
    self.carried = False      # set by a Checkpoint hook that saves the open window
    self._saved = window
    self._window, self._n, self._progress = None, 0, None

  def begin(self, loop: Loop) -> None:
    self._progress = metrics_lib.Progress(loop.start, loop.total, self.units_per_step, self.unit)
    self._window, self._n = None, 0
    w = self._saved
    if w and int(w['step']) == loop.start and int(w['n']) > 0:
      self._window = {k: np.asarray(v, dtype) for k, (v, dtype) in w['sums'].items()}
      self._n = int(w['n'])

  def window_state(self, step: int) -> dict[str, Any]:
    """The open window at `step` as JSON: {'step', 'n' (steps in it), 'sums' {name: [value,
    dtype]}}; exact (a float32 sum is a float64 without rounding)."""
    sums = {} if self._window is None else {
        k: [float(v), np.asarray(v).dtype.name] for k, v in jax.device_get(self._window).items()}
    return {'step': int(step), 'n': self._n, 'sums': sums}

  def after_step(self, loop: Loop, step: int, metrics: Mapping[str, Any]) -> None:
    # Summed on device: one transfer per row, not per step.
    self._window = metrics if self._window is None else jax.tree.map(jnp.add, self._window,
                                                                      metrics)
    self._n += 1
    row_step = step % self.every == 0 or step == loop.total
    if not (row_step or ((loop.last or loop.preempted) and not self.carried)):
      return
    if self.guard is not None:
      self.guard.check(step)
    scalars = {k: float(v) / self._n for k, v in jax.device_get(self._window).items()}
    if self.schedule is not None:
      scalars['learning_rate'] = float(self.schedule(step - 1))
    self._window, self._n = None, 0
    line, rates = self._progress.line(step, {k: scalars[k] for k in self.line_keys})
    logging.info(line)
    loop.writer.write(step, 'train', {**scalars, **rates})
    self.scalars = scalars


class Eval(Hook):
  """Runs `eval_fn(state)` every `every` steps, at the run's end, and optionally at step 0.

  Each result is logged ('eval at step 8: loss 2.1, perplexity 8.2') and
  written as split 'eval'.

  Args:
    eval_fn: state -> {name: float}.
    every: period in steps (<= 0: never periodically).
    at_end: also at step `total` (the whole run's end, not a time slice's).
    at_start: also before the first step of a fresh run (start == 0).

  Attributes:
    scalars: the last result ({} before the first).
  """

  def __init__(self, eval_fn: Callable[[Any], Mapping[str, float]], every: int, *,
               at_end: bool = True, at_start: bool = False):
    self.eval_fn, self.every = eval_fn, int(every)
    self.at_end, self.at_start = at_end, at_start
    self.scalars: dict[str, float] = {}

  def run(self, loop: Loop, step: int) -> dict[str, float]:
    scalars = dict(self.eval_fn(loop.state))
    logging.info('eval at step %d: %s', step, ', '.join(f'{k} {v:.4g}' for k, v in scalars.items()))
    loop.writer.write(step, 'eval', scalars)
    self.scalars = scalars
    return scalars

  def begin(self, loop: Loop) -> None:
    if self.at_start and loop.start == 0:
      self.run(loop, 0)

  def after_step(self, loop: Loop, step: int, metrics: Mapping[str, Any]) -> None:
    if (self.every > 0 and step % self.every == 0) or (self.at_end and step == loop.total):
      self.run(loop, step)


class Checkpoint(Hook):
  """Saves at the checkpointer's interval, and always at the last step and at SIGTERM.

  Args:
    ckpt: a `checkpoint.Checkpointer` (its `save_every` sets the interval).
    data_iter: the grain iterator the step function draws from (its position
      is saved, so a resume continues the same stream).
    meta: JSON metadata saved with every step.
    to_saveable: state -> what is saved (any pytree, e.g. a dict of items;
      default: the state itself).
    guard: a `NonFiniteGuard` checked before each save.
    log: a `Log` hook whose open window is saved in the metadata ('log_window'),
      so a resumed run continues it (see `Log`).
    stop_reason: first word of the warning logged after a SIGTERM save.
  """

  def __init__(self, ckpt: Any, data_iter: Any = None, meta: Mapping[str, Any] | None = None, *,
               to_saveable: Callable[[Any], Any] | None = None,
               guard: NonFiniteGuard | None = None, log: Log | None = None,
               stop_reason: str = 'preempted'):
    self.ckpt, self.data_iter, self.meta = ckpt, data_iter, dict(meta or {})
    self.to_saveable = to_saveable or (lambda s: s)
    self.guard, self.log, self.stop_reason = guard, log, stop_reason
    if log is not None:
      log.carried = True

  def after_step(self, loop: Loop, step: int, metrics: Mapping[str, Any]) -> None:
    forced = loop.last or loop.preempted
    if forced or self.ckpt.should_save(step):
      if self.guard is not None:
        self.guard.check(step)
      meta = self.meta if self.log is None else {**self.meta,
                                                  'log_window': self.log.window_state(step)}
      self.ckpt.save(step, self.to_saveable(loop.state), self.data_iter, meta, force=forced)
    if loop.preempted:
      logging.warning('%s: saved step %d to %s; rerun the same command to resume',
                      self.stop_reason, step, self.ckpt.directory)

  def end(self, loop: Loop) -> None:
    self.ckpt.wait()

  def close(self) -> None:
    self.ckpt.wait()
    self.ckpt.close()


class Profile(Hook):
  """A `jax.profiler` trace of steps [first, stop) into `log_dir` (TensorBoard's profile tab).

  Each traced step is marked with a `StepTraceAnnotation`; the trace ends
  after the state of step stop - 1 is ready (so its device work is inside),
  or at the run's end / an error if that comes first.
  """

  def __init__(self, log_dir: str, first: int, stop: int):
    if not 0 < int(first) < int(stop):
      raise ValueError(f'profile steps [{first}, {stop}): need 0 < first < stop')
    self.log_dir, self.first, self.stop = log_dir, int(first), int(stop)
    self._tracing, self._annotation = False, None

  def before_step(self, loop: Loop, step: int) -> None:
    if step == self.first:
      os.makedirs(self.log_dir, exist_ok=True)
      jax.profiler.start_trace(self.log_dir)
      self._tracing = True
      logging.info('profiling steps [%d, %d) into %s', self.first, self.stop, self.log_dir)
    if self._tracing:
      self._annotation = jax.profiler.StepTraceAnnotation('train', step_num=step)
      self._annotation.__enter__()

  def after_step(self, loop: Loop, step: int, metrics: Mapping[str, Any]) -> None:
    if self._annotation is not None:
      self._annotation.__exit__(None, None, None)
      self._annotation = None
    if self._tracing and step == self.stop - 1:
      jax.block_until_ready(loop.state)
      self._finish()

  def _finish(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False

  def close(self) -> None:
    if self._annotation is not None:
      self._annotation.__exit__(None, None, None)
      self._annotation = None
    self._finish()


def profile_hook(steps: Any, workdir: str) -> list[Hook]:
  """[Profile(<workdir>/tb, a, b)] for `steps` = (a, b), [] for None / () (profiling off)."""
  if not steps:
    return []
  first, stop = (int(x) for x in steps)
  return [Profile(os.path.join(workdir, 'tb'), first, stop)]
