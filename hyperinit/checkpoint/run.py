"""Run checkpoints: the `Checkpointer` (orbax `CheckpointManager` of TrainStates, the data
iterator and metadata), per-file checksums, and setting broken steps aside.

See the package docstring (`hyperinit.checkpoint`) for the layout.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from hyperinit import _checksums, models
from hyperinit import spec as spec_lib

ITEMS = ('params', 'opt_state', 'train', 'data', 'meta')
RUN_ITEMS = ('params', 'opt_state', 'train', 'meta')   # what a training run restores
PARAMS_ITEMS = ('params', 'meta')                      # what every params reader needs


class CheckpointError(RuntimeError):
  """A checkpoint is missing, incomplete, corrupt, or does not fit the run."""


def _short(e: BaseException) -> str:
  """First line of an exception, without TensorStore's multi-kilobyte spec dump."""
  text = str(e).strip().split('\n')[0].split(' See full TensorStore details')[0]
  return f'{type(e).__name__}: {text[:400]}'


def _is_step_dir(path: epath.Path) -> bool:
  return path.is_dir() and path.name.isdigit() and (path / 'meta').exists()


def resolve(path: str | os.PathLike) -> tuple[epath.Path, int | None]:
  """(checkpoint root, step or None) for a workdir, a checkpoint root, or one step dir."""
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f'checkpoint path {p} does not exist')
  if _is_step_dir(p):
    return p.parent, int(p.name)
  if (p / 'checkpoints').is_dir():
    return p / 'checkpoints', None
  return p, None


class Checkpointer:
  """A `CheckpointManager` for `TrainState`s plus the data iterator and metadata.

  Args:
    directory: checkpoint root (created on first save unless read_only).
    save_every: save every N steps (`save(..., force=True)` saves any step).
    keep: keep the newest N checkpoints.
    async_save: write in a background thread (the step is copied to host
      first, so training continues while files are written).
    read_only: never write or delete anything.
  """

  def __init__(self, directory: str | os.PathLike, *, save_every: int = 1000, keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    # orbax needs absolute paths; a relative --workdir is the usual thing to pass.
    directory = os.fspath(directory)
    self.directory = epath.Path(directory if '://' in directory else os.path.abspath(directory))
    # per-file checksums need a local (POSIX) file system; object stores check their own
    self._local = '://' not in directory
    self._unsummed: list[int] = []     # saved steps whose checksums are not written yet
    if read_only and not self.directory.exists():
      raise FileNotFoundError(f'checkpoint directory {self.directory} does not exist')
    if read_only:
      # orbax warns that a read-only manager is read-only; say nothing instead.
      logger = logging.get_absl_logger()
      level = logger.level
      logger.setLevel(py_logging.ERROR)
      try:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
      finally:
        logger.setLevel(level)
      return
    else:
      # Only the fixed interval: orbax's default also saves the first step of a
      # fresh run and reacts to its own preemption notices; the trainer forces
      # the final and the SIGTERM saves itself.
      # (an async step's checksums are written once orbax has committed it)
      options = ocp.CheckpointManagerOptions(
          max_to_keep=int(keep), create=True, enable_async_checkpointing=bool(async_save),
          save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(int(save_every)),
          async_options=(ocp.AsyncOptions(post_finalization_callback=self._write_checksums)
                         if async_save else None))
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  # --- queries ---------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _check_step(self, step: int | None, items: tuple[str, ...] = RUN_ITEMS) -> int:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise CheckpointError(f'no checkpoint in {self.directory}')
      return steps[-1]
    if step not in steps:
      raise CheckpointError(f'no checkpoint for step {step} in {self.directory}; '
                            f'available steps: {steps}')
    step_dir = self.directory / str(step)
    missing = [i for i in items if not (step_dir / i).exists()]
    if missing:
      raise CheckpointError(f'checkpoint {step_dir} is incomplete: items {missing} are missing')
    return step

  def meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata of a step (default: the latest)."""
    step = self._check_step(step, ('meta',))
    try:
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'checkpoint {self.directory / str(step)}: unreadable metadata '
                            f'({_short(e)})') from e

  # --- save / restore --------------------------------------------------------

  def save(self, step: int, state: Any, data_iter: Any = None, meta: dict[str, Any] | None = None,
           force: bool = False) -> bool:
    """Saves `state` (a TrainState) at `step` if due (or `force`); returns whether it did."""
    items = dict(params=ocp.args.StandardSave(state.params),
                 opt_state=ocp.args.StandardSave(state.opt_state),
                 train=ocp.args.StandardSave({'step': state.step, 'rng': state.rng}),
                 meta=ocp.args.JsonSave(dict(meta or {}, step=int(step))))
    if data_iter is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iter)
    saved = self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)
    if saved:
      self._unsummed.append(int(step))
      if not self.manager._options.enable_async_checkpointing:  # pylint: disable=protected-access
        self._write_checksums()
    return saved

  # --- integrity -------------------------------------------------------------

  def _write_checksums(self) -> None:
    """Records the checksums of the committed steps saved since the last call (process 0)."""
    pending, self._unsummed = self._unsummed, []
    if not self._local or jax.process_index() != 0:
      return
    for step in pending:
      step_dir = os.fspath(self.directory / str(step))
      if not os.path.isdir(step_dir):   # not committed yet (a later async save): next time
        self._unsummed.append(step)
      elif not _checksums.has(step_dir):
        _checksums.write(step_dir)

  def verify(self, step: int, items: tuple[str, ...] | None = None) -> bool:
    """Checks step `step`'s files against the checksums written when it was saved.

    Returns False for a step without checksums (saved before they existed, or
    killed between orbax's commit and the checksum).  Raises CheckpointError
    naming the corrupt file.
    """
    if not self._local:
      return False
    try:
      return _checksums.verify(os.fspath(self.directory / str(step)), items)
    except _checksums.ChecksumError as e:
      raise CheckpointError(f'checkpoint step {step} is corrupt: {e}') from e

  def set_aside(self, steps: list[int] | int, why: str) -> list[str]:
    """Moves step directories out of the checkpoint root (never deletes them).

    They go to `<root>.set_aside/<step>-<why>-<time>`, where neither orbax nor
    a resume sees them; returns the new paths.  Process 0 moves, every process
    waits for it.
    """
    steps = [steps] if isinstance(steps, int) else list(steps)
    dest_root = epath.Path(os.fspath(self.directory) + '.set_aside')
    stamp = time.strftime('%Y%m%dT%H%M%S')
    out = []
    for s in steps:
      name, n = f'{s}-{why}-{stamp}', 1
      while (dest_root / name).exists():
        n += 1
        name = f'{s}-{why}-{stamp}-{n}'
      out.append(os.fspath(dest_root / name))
    if jax.process_index() == 0:
      dest_root.mkdir(parents=True, exist_ok=True)
      for s, dst in zip(steps, out):
        os.replace(os.fspath(self.directory / str(s)), dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('hyperinit_checkpoint_set_aside')
    self.manager.reload()
    return out

  def resume_step(self, restore_step: int | None = None) -> int | None:
    """The step a run resumes from; None: no checkpoint (a fresh run).

    restore_step None: the newest step whose checksums and metadata check out;
    a newer step that does not is set aside ('broken') with a warning naming
    the step and the reason, and the next older one is tried.
    restore_step k: step k (CheckpointError if it is missing or corrupt:
    the user chose it); once it has restored, `set_aside_later(k)`.
    """
    if restore_step is not None:
      step = self._check_step(int(restore_step))
      self.verify(step)
      return step
    for step in reversed(self.all_steps()):
      try:
        self._check_step(step)
        self.verify(step)
        self.meta(step)
        return step
      except CheckpointError as e:
        self.skip_broken(step, e)
    return None

  def set_aside_later(self, step: int) -> list[str]:
    """Sets the steps after `step` aside ('after-restore-<step>'), so that a run resumed from
    an earlier step saves its own steps instead of colliding with them."""
    later = [s for s in self.all_steps() if s > step]
    if not later:
      return []
    moved = self.set_aside(later, f'after-restore-{step}')
    logging.warning('checkpoint.restore_step=%d: the later steps %s were set aside (not '
                    'deleted) so that this run can save its own: %s', step, later, moved)
    return moved

  def skip_broken(self, step: int, error: BaseException) -> str:
    """Sets a step that failed to restore aside, with a warning; returns where it went."""
    moved = self.set_aside(step, 'broken')[0]
    logging.warning('checkpoint step %d cannot be restored (%s); set aside as %s; resuming '
                    'from the next older step, if any', step, error, moved)
    return moved

  def _data_file(self, step: int) -> epath.Path:
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    return self.directory / str(step) / 'data' / name

  def data_state_available(self, step: int, any_process_count: bool = False) -> bool:
    """Whether the data iterator was saved for this process layout (or for any, with
    `any_process_count`)."""
    if any_process_count:
      return bool(list((self.directory / str(step) / 'data').glob('process_0-of-*.json')))
    return self._data_file(step).exists()

  def restore(self, target: Any, step: int | None = None, data_iter: Any = None, *,
              data_any_process_count: bool = False) -> tuple[Any, Any]:
    """Restores a TrainState onto `target`'s shardings (and the data iterator in place).

    Args:
      target: a TrainState of `jax.ShapeDtypeStruct`s with shardings (see
        `train.step.abstract_state`); any mesh, device or process count.
      step: which step (default: the latest).
      data_iter: a grain iterator whose position is set from the checkpoint
        (skipped when None).
      data_any_process_count: the iterator state means the same on every
        process ('rows' sharding, as `hyperinit.data` and the synthetic
        loaders do), so a state saved by another number of processes may be
        used: process 0's.

    Returns:
      (state, data_iter).

    Raises:
      CheckpointError: missing / incomplete / corrupt checkpoint, or one whose
        tree or shapes differ from `target` (nothing on disk is changed).
    """
    step = self._check_step(step)
    self.verify(step)
    items = dict(params=ocp.args.StandardRestore(target.params),
                 opt_state=ocp.args.StandardRestore(target.opt_state),
                 train=ocp.args.StandardRestore({'step': target.step, 'rng': target.rng}))
    foreign_data = None
    if data_iter is not None:
      if self.data_state_available(step):
        items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
      elif data_any_process_count and self.data_state_available(step, True):
        foreign_data = sorted((self.directory / str(step) / 'data').glob('process_0-of-*.json'))[0]
        logging.info('process count changed: data iterator state from %s', foreign_data)
      else:
        raise CheckpointError(
            f'checkpoint {self.directory / str(step)} has no data-iterator state for process '
            f'{jax.process_index()} of {jax.process_count()} (saved with a different process '
            f'count?); set config.checkpoint.reset_data=True to continue with a fresh iterator')
    self._check_shapes(step, target.params)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**items))
      if foreign_data is not None:  # what grain's handler does, from another layout's file
        text = foreign_data.read_text()
        data_iter.set_state(text.encode() if isinstance(data_iter, grain.DataLoaderIterator)
                            else json.loads(text))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'could not restore checkpoint {self.directory / str(step)}: {_short(e)}. '
          'Nothing on disk was changed') from e
    state = target.replace(params=out.params, opt_state=out.opt_state, step=out.train['step'],
                           rng=out.train['rng'])
    return state, data_iter

  def _check_shapes(self, step: int, abstract_params: Any) -> None:
    """Names the first param whose shape differs between the checkpoint and the run."""
    try:
      handler = ocp.StandardCheckpointHandler()
      saved = handler.metadata(self.directory / str(step) / 'params')
      handler.close()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'checkpoint {self.directory / str(step)}: unreadable params '
                            f'metadata ({_short(e)}). Nothing on disk was changed') from e
    flat_saved = spec_lib.flatten(saved, is_leaf=lambda x: hasattr(x, 'shape'))
    flat_want = spec_lib.flatten(abstract_params)
    missing = sorted(set(flat_want) - set(flat_saved))
    extra = sorted(set(flat_saved) - set(flat_want))
    if missing or extra:
      raise CheckpointError(f'checkpoint {self.directory / str(step)} params do not match the '
                            f'model: missing {missing[:5]}, unexpected {extra[:5]}')
    for k, want in flat_want.items():
      if tuple(flat_saved[k].shape) != tuple(want.shape):
        raise CheckpointError(f'checkpoint {self.directory / str(step)}: param {k!r} has shape '
                              f'{tuple(flat_saved[k].shape)}, the model expects {tuple(want.shape)}')

  def wait(self) -> None:
    """Blocks until pending async saves are committed (and their checksums written)."""
    self.manager.wait_until_finished()
    self._write_checksums()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def run_meta(model_cfg: models.ModelConfig, specs: Any, config: Any = None,
             mesh: Any = None) -> dict[str, Any]:
  """The metadata recorded with every checkpoint."""
  return {
      'model_config': model_cfg.to_dict(),
      'param_specs': json.loads(spec_lib.specs_to_json(specs)),
      'config': json.loads(config.to_json_best_effort()) if config is not None else None,
      'process_count': jax.process_count(),
      'mesh': dict(mesh.shape) if mesh is not None else None,
  }


