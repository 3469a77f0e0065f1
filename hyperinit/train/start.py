"""How a training run starts, in the order `train_and_evaluate` runs it:

    wd = start.open_workdir(config, workdir)   # lock, checkpointer, the step to resume from
    choice = start.resolve_model(config, wd)   # the model (config, init_from or checkpoint), muP
    start.check_config_change(config, wd)      # refuse changed hyper-parameters on a resume
    state, step, data_iter, window = start.restore_or_init(config, s, wd, choice, ...)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
from absl import logging

from hyperinit import checkpoint as ckpt_lib
from hyperinit import models
from hyperinit import spec as spec_lib
from hyperinit.train import init_from, mup as mup_train, step as step_lib, tasks

# Config fields a resumed run may change freely: where and how it runs and reports, not what
# it computes.  The model and config.mup are checked on their own (architecture, muP
# multipliers), with messages of their own; num_train_steps extends or shortens the run.
FREE_FIELDS = ('checkpoint.', 'mesh.', 'model.', 'mup.', 'init_from', 'num_train_steps',
               'log_every', 'eval_every', 'eval_batches', 'eval_batch_size', 'eval_at_start',
               'profile_steps', 'data.worker_count', 'data.data_dir')


class ConfigChangedError(ckpt_lib.CheckpointError):
  """A rerun on an existing workdir changes hyper-parameters of the run it resumes."""


@dataclasses.dataclass
class Workdir:
  """An open run directory: its lock (held until `close`), checkpointer, and the step the
  run resumes from with that step's metadata (None, None: a fresh run)."""
  path: str
  lock: ckpt_lib.WorkdirLock
  ckpt: ckpt_lib.Checkpointer
  resume_step: int | None
  saved_meta: dict[str, Any] | None

  def close(self) -> None:
    try:
      self.ckpt.close()
    finally:
      self.lock.release()

  def __enter__(self) -> 'Workdir':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_workdir(config: Any, workdir: str) -> Workdir:
  """Locks `workdir` (WorkdirBusyError naming the holder) and finds the step to resume from.

  The newest step that checks out (broken newer ones are set aside with a warning;
  all broken: CheckpointError unless config.checkpoint.restart_if_all_corrupt), or
  config.checkpoint.restore_step.
  """
  ck = config.checkpoint
  lock = ckpt_lib.WorkdirLock(workdir).acquire()
  try:
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=int(ck.every),
                                 keep=int(ck.keep), async_save=bool(ck.async_save))
    try:
      step = ckpt.resume_step(ck.get('restore_step'),
                              restart_if_all_corrupt=bool(ck.get('restart_if_all_corrupt')))
      meta = ckpt.meta(step) if step is not None else None
    except BaseException:
      ckpt.close()
      raise
  except BaseException:
    lock.release()
    raise
  return Workdir(workdir, lock, ckpt, step, meta)


@dataclasses.dataclass(frozen=True)
class ModelChoice:
  """The model a run trains and how fresh params start.

  Attributes:
    model_cfg: what is trained and saved (with muP's forward multipliers under muP).
    mup_run: the `train.mup.MupRun`, or None (standard parametrisation).
    params_transform: `fn(params, specs) -> params` for fresh or init_from params
      (muP init or fold, then the caller's), or None.
  """
  model_cfg: models.ModelConfig
  mup_run: mup_train.MupRun | None
  params_transform: Callable[[Any, Any], Any] | None


def resolve_model(config: Any, wd: Workdir,
                  params_transform: Callable[[Any, Any], Any] | None = None) -> ModelChoice:
  """The run's model: config.model, or the one recorded by init_from / the checkpoint; with
  config.mup (or a muP checkpoint), the muP run, checked against the checkpoint's.

  Fresh params get muP init; init_from params keep their values, with the change of forward
  multipliers folded into them (the loaded model's function is kept).
  """
  saved_meta, fresh = wd.saved_meta, wd.resume_step is None
  saved_mup = (saved_meta or {}).get('mup')
  base_cfg = None
  if config.model.name == 'init_from':
    if not fresh:
      # A muP run records its model before muP's multipliers: muP is re-derived from it.
      base_cfg = models.config_from_dict(saved_mup['target_config'] if saved_mup
                                         else saved_meta['model_config'])
    elif config.init_from:
      base_cfg = init_from.init_from_config(config.init_from)
    else:
      raise ValueError("config.model.name='init_from' needs config.init_from")
  model_cfg = tasks.resolve_model_config(config, base_cfg)
  if saved_mup is None and not mup_train.enabled(config):
    _check_arch(wd, model_cfg)
    return ModelChoice(model_cfg, None, params_transform)
  run = mup_train.prepare(config, model_cfg, saved_meta=saved_meta)
  if fresh and config.init_from:
    own = run.fold_transform(base_cfg or init_from.init_from_config(config.init_from))
  else:
    own = run.init_transform
  transform = own if params_transform is None else (
      lambda p, specs: params_transform(own(p, specs), specs))
  _check_arch(wd, run.model_cfg)
  logging.info('muP on: base model %s (%s); multipliers against it in the checkpoint metadata',
               type(run.base_cfg).__name__, _widths(run.base_cfg))
  return ModelChoice(run.model_cfg, run, transform)


def _widths(cfg: models.ModelConfig) -> str:
  return ', '.join(f'{f}={getattr(cfg, f)}' for f in mup_train.WIDTH_FIELDS if hasattr(cfg, f))


def _check_arch(wd: Workdir, model_cfg: models.ModelConfig) -> None:
  if wd.resume_step is None:
    return
  diff = init_from.arch_diff(models.config_from_dict(wd.saved_meta['model_config']), model_cfg)
  if diff:
    raise ckpt_lib.CheckpointError(
        f'checkpoint {wd.ckpt.directory / str(wd.resume_step)} was written for another model: '
        f'{diff} (saved, config); use a new workdir')


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f'{prefix}{k}.'))
  return out


def config_changes(saved: dict[str, Any], config: Any) -> dict[str, tuple[Any, Any]]:
  """{field: (checkpoint's value, config's)} for the hyper-parameters that differ
  (`FREE_FIELDS` excluded; a field one side lacks is '<absent>')."""
  old, new = _flat(saved), _flat(json.loads(config.to_json_best_effort()))
  out = {}
  for k in sorted(set(old) | set(new)):
    if k.startswith(FREE_FIELDS) or k in FREE_FIELDS:
      continue
    a, b = old.get(k, '<absent>'), new.get(k, '<absent>')
    if a != b and not (isinstance(a, list) and isinstance(b, (list, tuple)) and a == list(b)):
      out[k] = (a, b)
  return out


def check_config_change(config: Any, wd: Workdir) -> None:
  """On a resume, refuses a config whose hyper-parameters differ from the checkpoint's run,
  naming each changed field, unless config.checkpoint.allow_config_change (then logged)."""
  saved = (wd.saved_meta or {}).get('config')
  if wd.resume_step is None or not saved:
    return
  changes = config_changes(saved, config)
  if int(saved.get('num_train_steps', config.num_train_steps)) != int(config.num_train_steps):
    logging.info('num_train_steps %s -> %s (the checkpoint\'s run -> this one)',
                 saved.get('num_train_steps'), config.num_train_steps)
  if not changes:
    return
  listing = ', '.join(f'{k} {a!r} -> {b!r}' for k, a, b in ((k, *v) for k, v in changes.items()))
  if config.checkpoint.get('allow_config_change'):
    logging.warning('config.checkpoint.allow_config_change: resuming step %d with changed '
                    'hyper-parameters (checkpoint -> config): %s', wd.resume_step, listing)
    return
  raise ConfigChangedError(
      f'workdir {wd.path} holds a run with other hyper-parameters (checkpoint -> config): '
      f'{listing}; rerun with the checkpoint\'s values, use a new workdir, or set '
      'config.checkpoint.allow_config_change=True to continue with the new ones')


def restore_or_init(config: Any, s: Any, wd: Workdir, choice: ModelChoice, data_iter: Any,
                    new_data_iter: Callable[[int], Any], *, any_process_count: bool
                    ) -> tuple[Any, int, Any, dict[str, Any] | None]:
  """(state, step, data_iter, log window) restored from `wd` or freshly initialised.

  Args:
    config: the run's config.
    s: the run's `build.Setup`.
    wd: the open workdir.
    choice: `resolve_model`'s result.
    data_iter: the training iterator (its position is restored in place).
    new_data_iter: `fn(seed_offset)` -> a fresh iterator (config.checkpoint.reset_data).
    any_process_count: the iterator's state means the same for any process count.
  """
  if wd.resume_step is None:
    return _init(config, s, choice), 0, data_iter, None
  ck = config.checkpoint
  target = step_lib.abstract_state(s.tx, s.shapes, s.shardings)
  r = wd.ckpt.restore_with_fallback(
      target, wd.resume_step, data_iter, explicit=ck.get('restore_step') is not None,
      data_any_process_count=any_process_count, reset_data=bool(ck.get('reset_data')))
  if not r.data_restored:
    logging.warning('data iterator state not restorable; starting a fresh one')
    data_iter = new_data_iter(r.step)
  logging.info('resumed from %s at step %d', wd.ckpt.directory, int(r.state.step))
  window = wd.ckpt.meta(r.step).get('log_window') if r.step != wd.resume_step else (
      wd.saved_meta.get('log_window'))
  return r.state, r.step, data_iter, window


def _init(config: Any, s: Any, choice: ModelChoice) -> Any:
  """A fresh TrainState: init_from params or the model's init, through `params_transform`."""
  transform = choice.params_transform
  rng = jax.random.key(int(config.seed))
  if config.init_from:
    params = init_from.load_init_params(config.init_from, choice.model_cfg, s.shardings.params)
    if transform is not None:
      params = jax.jit(lambda p: transform(p, s.specs), out_shardings=s.shardings.params)(params)
    logging.info('initialised params from %s', config.init_from)
    return step_lib.state_from_params(params, s.tx, rng, s.shardings)
  init_params = lambda k: spec_lib.unbox(models.init_boxed(choice.model_cfg, k))
  if transform is not None:
    init_params = (lambda f: lambda k: transform(f(k), s.specs))(init_params)
  return step_lib.init_state(init_params, s.tx, rng, s.shardings)
