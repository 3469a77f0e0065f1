"""`run_loop(state, step_fn, hooks, ...)`: the one training loop, a step function plus
`hyperinit.train.hooks` (logging, eval, checkpoints, the non-finite guard, profiling) around
each step and the stop flag (SIGTERM / Ctrl-C) read at every step boundary.  Model training
(`train.loop`) and GHN meta-training (`train.ghn`) are both built on it.
"""

from __future__ import annotations

from typing import Any, Callable

from hyperinit.train import distributed, hooks as hooks_lib, metrics as metrics_lib


def run_loop(state: Any, step_fn: Callable[[Any, int], tuple[Any, Any]],
             hooks: list[hooks_lib.Hook], *, start: int, total: int, workdir: str,
             stop: int | None = None, preemption_sync_every: int = 10) -> hooks_lib.Loop:
  """Runs steps start+1 .. stop of `step_fn`, with `hooks` around each one.

  Args:
    state: the state at `start` (any pytree; e.g. a TrainState).
    step_fn: (state, step) -> (state, metrics): runs step `step` (1-based),
      fetching its own batch; metrics is a dict of scalar arrays [].
    hooks: `hooks.Hook`s, called in list order (see hyperinit/train/hooks.py).
    start: the step `state` is at (0 for a fresh run).
    total: the run's number of steps.
    workdir: where metrics.jsonl and tb/ are written (truncated to `start`,
      so steps replayed after a crash are recorded once).
    stop: return after this step (a time slice); default `total`.
    preemption_sync_every: steps between the processes' SIGTERM agreement
      (multi-process only).

  Returns:
    the `hooks.Loop`: .state, .step and .preempted (a SIGTERM stopped it).
  """
  stop = total if stop is None else stop
  writer = metrics_lib.MetricsWriter(workdir, resume_step=start)
  loop = hooks_lib.Loop(state=state, start=start, stop=stop, total=total, writer=writer,
                        step=start)
  watcher = distributed.PreemptionWatcher(preemption_sync_every)
  try:
    for h in hooks:
      h.begin(loop)
    for step in range(start + 1, stop + 1):
      for h in hooks:
        h.before_step(loop, step)
      loop.state, m = step_fn(loop.state, step)
      loop.step = step
      # Read once per step, before any hook: every process saves and stops at the same step.
      loop.preempted = watcher.requested(step)
      for h in hooks:
        h.after_step(loop, step, m)
      if loop.preempted:
        break
    writer.flush()
    for h in hooks:
      h.end(loop)
  finally:
    watcher.close()
    writer.close()
    for h in hooks:
      h.close()
  return loop
