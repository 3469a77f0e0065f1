"""`train_and_evaluate(config, workdir)`: model training; `run_loop`: the loop under it.

Importable from a notebook; `experiments/train.py` is a thin absl wrapper.
Rerunning with the same workdir resumes from the latest checkpoint (params,
optimizer, step, rng and the data iterator), so a preempted or killed run
continues exactly where it stopped.

`run_loop(state, step_fn, hooks, ...)` is the one training loop: a step
function plus `hyperinit.train.hooks` (logging, eval, checkpoints + SIGTERM,
non-finite guard, profiling).  `train_and_evaluate` and GHN meta-training
(`hyperinit.train.ghn`) are both built on it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from hyperinit import checkpoint as ckpt_lib
from hyperinit import models, sharding
from hyperinit import spec as spec_lib
from hyperinit.train import distributed, hooks as hooks_lib, init_from, metrics as metrics_lib
from hyperinit.train import mup as mup_train, optim, step as step_lib, tasks


@dataclasses.dataclass
class Setup:
  """Everything built from the config before the loop runs (handy in notebooks)."""
  mesh: Any
  rules: Any
  task: tasks.Task
  specs: Any
  shapes: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  shardings: step_lib.TrainState
  batch_shardings: Any
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]


def setup(config: Any, *, model_cfg: models.ModelConfig | None = None,
          optimizer: optim.OptimizerFactory | optax.GradientTransformation | None = None,
          lr_multipliers: Any = None, devices: Any = None) -> Setup:
  """Mesh, rules, task, optimizer, shardings and jitted steps for a config."""
  mesh = sharding.make_mesh({k: int(config.mesh[k]) for k in sharding.MESH_AXES}, devices)
  model_cfg = model_cfg or tasks.resolve_model_config(config)
  task = tasks.make_task(config, model_cfg)
  specs, shapes = models.param_specs(model_cfg), models.param_shapes(model_cfg)
  rules = sharding.fit_rules(sharding.make_rules(config.mesh.get('rules')), shapes, specs,
                             mesh)
  total = int(config.num_train_steps)
  schedule = optim.make_schedule(config.optimizer, total)
  if optimizer is None:
    # A per-leaf learning rate scales the whole update, decay included ('follows_lr').
    tx, schedule = optim.from_config(config.optimizer, total, specs, lr_factors=lr_multipliers,
                                     wd_mode='follows_lr')
  elif isinstance(optimizer, optax.GradientTransformation):
    tx = optimizer
  else:
    tx = optimizer(config, specs, schedule)
  param_sh = sharding.tree_shardings(shapes, specs, mesh, rules)
  state_sh = step_lib.state_shardings(param_sh, tx, mesh, shapes)
  gb, k = int(config.batch_size), int(config.get('grad_accum_steps') or 1)
  div = sharding.batch_divisor(mesh, rules)
  if gb % (div * k) or gb % jax.process_count():
    raise ValueError(f'batch_size={gb} must be divisible by the batch sharding ({div} ways) '
                     f'x grad_accum_steps ({k}) and by the process count ({jax.process_count()})')
  batch_sh = {key: sharding.batch_sharding(mesh, rules, len(s.shape))
              for key, s in task.batch_shapes(gb).items()}
  with sharding.activation_context(mesh, rules):
    train_step = step_lib.make_train_step(task.loss_fn, tx, state_sh, batch_sh,
                                          grad_accum_steps=k)
    eval_step = step_lib.make_eval_step(task.eval_fn, param_sh, batch_sh, mesh)
  return Setup(mesh, rules, task, specs, shapes, tx, schedule, state_sh, batch_sh,
               _in_context(train_step, mesh, rules), _in_context(eval_step, mesh, rules))


def _in_context(fn, mesh, rules):
  """Calls (and so traces) `fn` with the activation rules and mesh set."""
  def wrapped(*args):
    with sharding.activation_context(mesh, rules):
      return fn(*args)
  wrapped.jitted = fn
  return wrapped


def global_batch(batch: dict[str, np.ndarray], batch_shardings: dict[str, Any],
                 expected: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
  """This process's slice of a batch -> global arrays sharded over the mesh."""
  out = {}
  for key, want in expected.items():
    if key not in batch:
      raise KeyError(f'data batch has keys {sorted(batch)}; the task needs {key!r}')
    x = np.asarray(batch[key])
    local = (want.shape[0] // jax.process_count(),) + tuple(want.shape[1:])
    if x.shape != local:
      raise ValueError(f'data batch {key!r} has shape {x.shape}; expected {local} (global '
                       f'{want.shape} over {jax.process_count()} processes)')
    out[key] = jax.make_array_from_process_local_data(batch_shardings[key], x.astype(want.dtype),
                                                      want.shape)
  return out


def evaluate(s: Setup, config: Any, params: Any, loader: Any = None) -> dict[str, float]:
  """Eval metrics over `config.eval_batches` batches (or one full pass if <= 0).

  Batches may carry a 'mask' [B] (1 real, 0 padding) so a pass counts every
  example exactly once.
  """
  loader = loader or tasks.make_loader(config, s.task, tasks.eval_split(config), train=False,
                                       seed=int(config.seed))
  limit = int(config.eval_batches)
  eb = int(config.get('eval_batch_size') or config.batch_size)
  sums = None
  for i, batch in enumerate(loader):
    if 0 < limit <= i:
      break
    expected = dict(s.task.batch_shapes(eb))
    if 'mask' in batch:
      expected['mask'] = jax.ShapeDtypeStruct((eb,), jnp.float32)
    shardings = {k: sharding.batch_sharding(s.mesh, s.rules, len(v.shape))
                 for k, v in expected.items()}
    out = s.eval_step(params, global_batch(batch, shardings, expected))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  if sums is None:
    raise ValueError(f'eval split {tasks.eval_split(config)!r} gave no full batch of {eb}')
  return s.task.summarize({k: float(v) for k, v in jax.device_get(sums).items()})


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

  Returns:
    {'step', 'preempted', 'train' (last logged metrics), 'eval', 'state'}.

  Raises:
    FloatingPointError: the loss or gradient norm became non-finite; the
      newest checkpoint on disk is from before that.
    CheckpointError: the workdir's checkpoint cannot be restored or does
      not fit the config (nothing is overwritten).
  """
  metrics_lib.quiet_libraries()
  os.makedirs(workdir, exist_ok=True)
  ck = config.checkpoint
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=int(ck.every),
                               keep=int(ck.keep), async_save=bool(ck.async_save))
  # the newest step that checks out (broken newer ones are set aside with a warning), or
  # restore_step (later steps set aside so this run can save past it)
  explicit = ck.get('restore_step') is not None
  resume_step = ckpt.resume_step(ck.get('restore_step'))
  # The model: from config.model, or the one recorded by init_from / our own checkpoint.
  saved_meta = ckpt.meta(resume_step) if resume_step is not None else None
  saved_mup = (saved_meta or {}).get('mup')
  base_cfg = None
  if config.model.name == 'init_from':
    if resume_step is not None:
      # A muP run records its model before muP's multipliers: muP is re-derived from it.
      base_cfg = models.config_from_dict(saved_mup['target_config'] if saved_mup
                                         else saved_meta['model_config'])
    elif config.init_from:
      base_cfg = init_from.init_from_config(config.init_from)
    else:
      raise ValueError("config.model.name='init_from' needs config.init_from")
  model_cfg = tasks.resolve_model_config(config, base_cfg)
  mup_run = None
  if saved_mup is not None or _mup_enabled(config):
    optimizer, params_transform, mup_run = _mup_hooks(
        config, model_cfg, saved_meta, base_cfg, optimizer, lr_multipliers, params_transform,
        fresh_init_from=bool(config.init_from) and resume_step is None)
    model_cfg = mup_run.model_cfg
  s = setup(config, model_cfg=model_cfg, optimizer=optimizer, lr_multipliers=lr_multipliers)
  meta = ckpt_lib.run_meta(model_cfg, s.specs, config, s.mesh)
  if mup_run is not None:
    meta['mup'] = mup_run.meta()   # multipliers, base and target configs: checked on resume
  logging.info('model %s: %d params; mesh %s; %d of %d param leaves sharded',
               type(model_cfg).__name__, spec_lib.count(s.shapes), dict(s.mesh.shape),
               sum(any(a in p for a in sharding.MESH_AXES)
                   for p in sharding.describe(s.shardings.params).values()),
               len(jax.tree.leaves(s.shapes)))
  logging.vlog(1, 'param shardings: %s', sharding.describe(s.shardings.params))

  seed = int(config.seed)
  loader = train_loader or tasks.make_loader(config, s.task, config.data.train_split, train=True,
                                             seed=seed)
  data_iter = iter(loader)
  target = step_lib.abstract_state(s.tx, s.shapes, s.shardings)
  if resume_step is not None:
    diff = init_from.arch_diff(models.config_from_dict(saved_meta['model_config']), model_cfg)
    if diff:
      raise ckpt_lib.CheckpointError(
          f'checkpoint {ckpt.directory / str(resume_step)} was written for another model: '
          f'{diff} (saved, config); use a new workdir')
    # Our loaders shard by rows of one global stream: their state fits any process count.
    ours = train_loader is None
    failed = []   # (step, error): set aside only once an older step restores into the same
    while True:   # target, so a config that fits no step never moves a checkpoint
      reset_data = bool(ck.get('reset_data')) and not ckpt.data_state_available(resume_step, ours)
      try:
        state, _ = ckpt.restore(target, resume_step, None if reset_data else data_iter,
                                data_any_process_count=ours)
        break
      except ckpt_lib.CheckpointError as e:
        older = [x for x in ckpt.all_steps() if x < resume_step]
        if explicit or not older:
          if failed:
            raise failed[0][1]
          raise
        failed.append((resume_step, e))
        resume_step = older[-1]
    for step, e in failed:
      ckpt.skip_broken(step, e)
    if explicit:
      ckpt.set_aside_later(resume_step)
    if reset_data:
      logging.warning('data iterator state not restorable; starting a fresh one')
      data_iter = iter(tasks.make_loader(config, s.task, config.data.train_split, train=True,
                                         seed=seed + resume_step))
    logging.info('resumed from %s at step %d', ckpt.directory, int(state.step))
  else:
    init_params = lambda k: spec_lib.unbox(models.init_boxed(model_cfg, k))
    rng = jax.random.key(seed)
    if config.init_from:
      params = init_from.load_init_params(config.init_from, model_cfg, s.shardings.params)
      if params_transform is not None:
        params = jax.jit(lambda p: params_transform(p, s.specs),
                         out_shardings=s.shardings.params)(params)
      state = step_lib.state_from_params(params, s.tx, rng, s.shardings)
      logging.info('initialised params from %s', config.init_from)
    else:
      if params_transform is not None:
        init_params = (lambda f: lambda k: params_transform(f(k), s.specs))(init_params)
      state = step_lib.init_state(init_params, s.tx, rng, s.shardings)
  start = int(state.step)
  return _loop(config, workdir, s, state, start, data_iter, ckpt, meta, eval_loader,
               eval_metrics_fn)


def _mup_enabled(config: Any) -> bool:
  return bool(config.get('mup') is not None and config.mup.get('enabled'))


def _mup_hooks(config, model_cfg, saved_meta, init_from_cfg, optimizer, lr_multipliers,
               params_transform, fresh_init_from: bool):
  """(optimizer, params_transform, MupRun) for `config.mup` (hyperinit.train.mup).

  Fresh params get muP init; init_from params keep their values, with the change
  of forward multipliers folded into them (the loaded model's function is kept).
  """
  if optimizer is not None or lr_multipliers is not None:
    raise ValueError('config.mup.enabled builds the muP optimizer; do not pass optimizer= or '
                     'lr_multipliers= as well')
  run = mup_train.prepare(config, model_cfg, saved_meta=saved_meta)
  if fresh_init_from:
    source = init_from_cfg or init_from.init_from_config(config.init_from)
    own = run.fold_transform(source)
  else:
    own = run.init_transform
  def mup_optimizer(config, specs, schedule):   # the trainer's chain with muP's factors
    del schedule                                  # run.optimizer rebuilds the same one
    return run.optimizer(config.optimizer, int(config.num_train_steps), specs)[0]
  if params_transform is not None:
    user = params_transform
    return mup_optimizer, lambda p, specs: user(own(p, specs), specs), run
  return mup_optimizer, own, run


def _evaluate_all(s, config, params, eval_loader, eval_metrics_fn) -> dict[str, float]:
  out = evaluate(s, config, params, eval_loader)
  if eval_metrics_fn is not None:
    extra = jax.device_get(eval_metrics_fn(params))
    out.update({k: float(v) for k, v in extra.items()})
  return out


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


def _loop(config, workdir, s: Setup, state, start, data_iter, ckpt, meta, eval_loader,
          eval_metrics_fn=None):
  """train_and_evaluate's loop: the train step, window logging, eval, checkpoints."""
  total, gb = int(config.num_train_steps), int(config.batch_size)
  expected = s.task.batch_shapes(gb)

  def step_fn(state, step):
    try:
      batch = next(data_iter)
    except StopIteration:
      raise ValueError(f'training data ran out at step {step}') from None
    return s.train_step(state, global_batch(batch, s.batch_shardings, expected))

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
                      s.task.unit, schedule=s.schedule, guard=guard)
  ev = hooks_lib.Eval(lambda st: _evaluate_all(s, config, st.params, eval_loader, eval_metrics_fn),
                      eval_every, at_end=eval_every > 0,
                      at_start=eval_every > 0 and bool(config.get('eval_at_start')))
  hooks = [guard, log, ev, hooks_lib.Checkpoint(ckpt, data_iter, meta, guard=guard),
           *hooks_lib.profile_hook(config.get('profile_steps'), workdir)]
  out = run_loop(state, step_fn, hooks, start=start, total=total, workdir=workdir,
                 preemption_sync_every=int(config.checkpoint.preemption_sync_every))
  return {'step': int(out.state.step), 'preempted': out.preempted, 'train': log.scalars,
          'eval': ev.scalars, 'state': out.state}
