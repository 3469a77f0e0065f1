"""`train_and_evaluate(config, workdir)`: model training, from a config to a trained,
checkpointed run.

Importable from a notebook; `experiments/train.py` is a thin absl wrapper.
Rerunning with the same workdir resumes from the latest checkpoint (params,
optimizer, step, rng, the data iterator and the open log window), so a preempted
or killed run continues exactly where it stopped, writing the same metrics rows.

The pieces live by idea: `start` (workdir lock, model and muP resolution,
config-change check, restore or init), `build` (mesh, optimizer, jitted steps:
`setup`, `global_batch`, `evaluate`), `runner` (`run_loop`, the loop under
this and GHN meta-training) and `hooks`.  Their public names are re-exported
here.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from absl import logging

from hyperinit import checkpoint as ckpt_lib
from hyperinit import sharding
from hyperinit import spec as spec_lib
from hyperinit.train import distributed, hooks as hooks_lib, optim, start as start_lib, tasks
from hyperinit.train.build import Setup, evaluate, global_batch, setup
from hyperinit.train.runner import run_loop

__all__ = ['Setup', 'evaluate', 'global_batch', 'run_loop', 'setup', 'tasks',
           'train_and_evaluate']


def train_and_evaluate(config: Any, workdir: str, *,
                       optimizer: optim.OptimizerFactory | optax.GradientTransformation | None = None,
                       lr_multipliers: Any = None,
                       params_transform: Callable[[Any, Any], Any] | None = None,
                       train_loader: Any = None, eval_loader: Any = None,
                       eval_metrics_fn: Callable[[Any], Any] | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints) and evaluates.

  Args:
    config: ConfigDict as in `configs/lm.py` / `configs/vit.py`.  With
      `config.mup.enabled`, the model, init (or, for init_from params, a
      function-preserving fold of the forward multipliers), optimizer and
      checkpoint metadata follow muP (`hyperinit.train.mup`).
    workdir: run directory: checkpoints/, metrics.jsonl, tb/ (TensorBoard).
    optimizer: replaces `optim.from_config`: a GradientTransformation or
      `fn(config, specs, schedule) -> GradientTransformation` (e.g. muP).
    lr_multipliers: per-leaf update multipliers for the default optimizer.
    params_transform: `fn(params, specs) -> params`, applied (sharded, under
      jit) to freshly initialised or init_from params, e.g. a muP rescale.
    train_loader / eval_loader: replace the configured data (grain loaders
      following the `hyperinit.data` contract).
    eval_metrics_fn: `fn(params) -> {name: scalar}`, extra scalars computed
      from the params at every evaluation (e.g. a clone's symmetry
      diagnostic), logged and written with the eval metrics.

  `config.profile_steps = (a, b)` (when the config has it; default off)
  writes a `jax.profiler` trace of steps [a, b) to `<workdir>/tb`.

  Runs in named steps (`hyperinit.train.start`): lock the workdir and find the
  step to resume from; resolve the model (and muP run); build mesh, optimizer
  and steps (`build.setup`); refuse changed hyper-parameters on a resume; restore
  or init; build the hooks; run the loop.  SIGTERM / Ctrl-C set a flag read
  between these steps and at every step (`distributed.stop_signals`).

  Returns:
    {'step', 'preempted', 'train' (last logged metrics), 'eval', 'state'};
    preempted True with state None: a stop signal arrived during start-up
    (nothing new to save; the last checkpoint stays the resume point).

  Raises:
    FloatingPointError: the loss or gradient norm became non-finite; the
      newest checkpoint on disk is from before that.
    CheckpointError: the workdir's checkpoint cannot be restored or does
      not fit the config (nothing is overwritten); WorkdirBusyError: another
      run holds the workdir; ConfigChangedError: changed hyper-parameters.
  """
  with distributed.stop_signals(), start_lib.open_workdir(config, workdir) as wd:
    choice = start_lib.resolve_model(config, wd, params_transform)
    s = setup(config, model_cfg=choice.model_cfg, optimizer=optimizer,
              lr_multipliers=lr_multipliers, mup_run=choice.mup_run)
    start_lib.check_config_change(config, wd)
    _log_model(s)
    if distributed.stop_requested():
      return _stopped_at_startup(wd)
    seed = int(config.seed)
    new_iter = lambda offset: iter(train_loader or tasks.make_loader(
        config, s.task, config.data.train_split, train=True, seed=seed + offset))
    # Our loaders shard by rows of one global stream: their state fits any process count.
    state, start, data_iter, window = start_lib.restore_or_init(
        config, s, wd, choice, new_iter(0), new_iter, any_process_count=train_loader is None)
    if distributed.stop_requested():
      return _stopped_at_startup(wd)
    meta = ckpt_lib.run_meta(choice.model_cfg, s.specs, config, s.mesh)
    if choice.mup_run is not None:
      meta['mup'] = choice.mup_run.meta()   # multipliers, base and target configs: checked on resume
    hooks, log, ev = _hooks(config, workdir, s, wd.ckpt, data_iter, meta, start, window,
                            eval_loader, eval_metrics_fn)
    out = run_loop(state, _step_fn(s, config, data_iter), hooks, start=start,
                   total=int(config.num_train_steps), workdir=workdir,
                   preemption_sync_every=int(config.checkpoint.preemption_sync_every))
  return {'step': int(out.state.step), 'preempted': out.preempted, 'train': log.scalars,
          'eval': ev.scalars, 'state': out.state}


def _log_model(s: Setup) -> None:
  logging.info('model %s: %d params; mesh %s; %d of %d param leaves sharded',
               type(s.task.model_cfg).__name__, spec_lib.count(s.shapes), dict(s.mesh.shape),
               sum(any(a in p for a in sharding.MESH_AXES)
                   for p in sharding.describe(s.shardings.params).values()),
               len(jax.tree.leaves(s.shapes)))
  logging.vlog(1, 'param shardings: %s', sharding.describe(s.shardings.params))


def _stopped_at_startup(wd: start_lib.Workdir) -> dict[str, Any]:
  logging.warning('%s during start-up (before the first step): nothing new to save; the last '
                  'checkpoint (%s) stays the resume point', distributed.stop_requested(),
                  f'step {wd.resume_step}' if wd.resume_step is not None else 'none yet')
  return {'step': wd.resume_step or 0, 'preempted': True, 'train': {}, 'eval': {},
          'state': None}


def _step_fn(s: Setup, config: Any, data_iter: Any) -> Callable[[Any, int], Any]:
  expected = s.task.batch_shapes(int(config.batch_size))

  def step_fn(state, step):
    try:
      batch = next(data_iter)
    except StopIteration:
      raise ValueError(f'training data ran out at step {step}') from None
    return s.train_step(state, global_batch(batch, s.batch_shardings, expected))
  return step_fn


def _hooks(config, workdir, s: Setup, ckpt, data_iter, meta, start, window, eval_loader,
           eval_metrics_fn) -> tuple[list[hooks_lib.Hook], hooks_lib.Log, hooks_lib.Eval]:
  """The trainer's hooks: non-finite guard, window logging (carried in the checkpoint), eval,
  checkpoints, profiling."""
  gb = int(config.batch_size)

  def non_finite(first, step):
    ckpt.wait()  # so the checkpoint named is on disk
    msg = (f'non-finite loss or gradient norm between steps {first} and {step}; training '
           'stopped without saving. ')
    good = ckpt.latest_step()
    if good is None:
      return msg + ('No checkpoint was saved before it. Lower optimizer.learning_rate or set '
                    'optimizer.grad_clip_norm and start again.')
    checked = 'checksums verified' if ckpt.verify(good) else 'no checksums recorded'
    msg += (f'Newest good checkpoint: step {good} in {ckpt.directory} (finite when saved; '
            f'{checked}). ')
    if good == start:
      older = [x for x in ckpt.all_steps() if x < good]
      return msg + ('It is the step this run started from, so rerunning unchanged repeats the '
                    'failure (training is deterministic): first lower optimizer.learning_rate or '
                    'set optimizer.grad_clip_norm' + (
                        f', or resume from an earlier step with --config.checkpoint.restore_step'
                        f'={older[-1]} (saved: {older})' if older else '') + '.')
    return msg + ('Lower optimizer.learning_rate or set optimizer.grad_clip_norm, then rerun to '
                  'resume from it.')

  eval_every = int(config.eval_every)
  guard = hooks_lib.NonFiniteGuard(lambda m: m['loss'] + m['grad_norm'], non_finite)
  log = hooks_lib.Log(int(config.log_every), ('loss', 'grad_norm'), gb * s.task.units_per_example,
                      s.task.unit, schedule=s.schedule, guard=guard, window=window)
  ev = hooks_lib.Eval(lambda st: _evaluate_all(s, config, st.params, eval_loader, eval_metrics_fn),
                      eval_every, at_end=eval_every > 0,
                      at_start=eval_every > 0 and bool(config.get('eval_at_start')))
  hooks = [guard, log, ev, hooks_lib.Checkpoint(ckpt, data_iter, meta, guard=guard, log=log),
           *hooks_lib.profile_hook(config.get('profile_steps'), workdir)]
  return hooks, log, ev


def _evaluate_all(s, config, params, eval_loader, eval_metrics_fn) -> dict[str, float]:
  out = evaluate(s, config, params, eval_loader)
  if eval_metrics_fn is not None:
    extra = jax.device_get(eval_metrics_fn(params))
    out.update({k: float(v) for k, v in extra.items()})
  return out
