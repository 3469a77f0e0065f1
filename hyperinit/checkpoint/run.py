"""Run checkpoints: the `Checkpointer` (an orbax `CheckpointManager` of any pytree, the data
iterator and metadata), per-file checksums, setting broken steps aside, and the resume policy.

See the package docstring (`hyperinit.checkpoint`) for the layout.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
from typing import Any, Mapping

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from hyperinit import _checksums, models
from hyperinit import spec as spec_lib
from hyperinit.checkpoint import resume
from hyperinit.checkpoint.resume import CheckpointError, Restored  # pylint: disable=unused-import

ITEMS = ('params', 'opt_state', 'train', 'data', 'meta')   # a training run's step directory
RUN_ITEMS = ('params', 'opt_state', 'train', 'meta')   # what a training run restores
PARAMS_ITEMS = ('params', 'meta')                      # what every params reader needs
RESERVED = ('data', 'meta')                            # item names the Checkpointer writes itself
STATE_ITEM = 'state'                                   # the item of a pytree that is not a Mapping


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


def _is_train_state(state: Any) -> bool:
  return (not isinstance(state, Mapping) and hasattr(state, 'replace')
          and all(hasattr(state, f) for f in ('params', 'opt_state', 'step', 'rng')))


def state_items(state: Any) -> dict[str, Any]:
  """The orbax items `state` is saved as (each its own sub-directory of the step).

  A Mapping `{name: pytree}` saves each entry as its own item (e.g.
  `{'state': ..., 'ema': ...}`); a TrainState (anything with `.params`,
  `.opt_state`, `.step`, `.rng` and `.replace`) as `params`, `opt_state` and
  `train` {'step', 'rng'}, the layout every params reader knows; any other pytree
  as the one item 'state'.
  """
  if _is_train_state(state):
    return {'params': state.params, 'opt_state': state.opt_state,
            'train': {'step': state.step, 'rng': state.rng}}
  if not isinstance(state, Mapping):
    return {STATE_ITEM: state}
  bad = [k for k in state if not isinstance(k, str) or not k.isidentifier() or k in RESERVED]
  if bad or not state:
    raise ValueError(f'checkpoint items {bad or "{}"}: item names must be identifiers other than '
                     f'{RESERVED} (the Checkpointer writes those itself), at least one')
  return dict(state)


def state_from_items(target: Any, items: Mapping[str, Any]) -> Any:
  """The inverse of `state_items`: restored items as `target`'s type."""
  if _is_train_state(target):
    return target.replace(params=items['params'], opt_state=items['opt_state'],
                          step=items['train']['step'], rng=items['train']['rng'])
  if not isinstance(target, Mapping):
    return items[STATE_ITEM]
  return type(target)(**items) if type(target) is not dict else dict(items)


class Checkpointer(resume.ResumePolicy):
  """A `CheckpointManager` for any pytree (e.g. a TrainState, `{'state': s, 'ema': e}`),
  the data iterator's position and JSON metadata; every committed step carries checksums.

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
    self._async = bool(async_save) and not read_only
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
    # Only the fixed interval: orbax's default also saves the first step of a fresh run and
    # reacts to its own preemption notices; the trainer forces the final and SIGTERM saves.
    # An async step's checksums are written into its temporary directory after orbax has
    # finalized the items and before it renames the directory: a committed step has them.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(keep), create=True, enable_async_checkpointing=self._async,
        save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(int(save_every)),
        async_options=(ocp.AsyncOptions(post_finalization_callback=self._write_checksums)
                       if self._async else None))
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  # --- queries ---------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `step` is on the save interval."""
    return self.manager.should_save(step)

  def _check_step(self, step: int | None, items: tuple[str, ...] = ('meta',)) -> int:
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

  def items(self, step: int) -> list[str]:
    """The state items saved at `step` (without 'data' and 'meta')."""
    step_dir = self.directory / str(step)
    return sorted(p.name for p in step_dir.iterdir() if p.is_dir() and p.name not in RESERVED)

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
    """Saves `state` (any pytree of arrays; see `state_items`) at `step` if due (or `force`).

    `data_iter` (a grain iterator) saves its position; `meta` is JSON saved
    with the step.  Returns whether it saved.
    """
    items = {k: ocp.args.StandardSave(v) for k, v in state_items(state).items()}
    items['meta'] = ocp.args.JsonSave(dict(meta or {}, step=int(step)))
    if data_iter is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iter)
    saved = self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)
    if saved:
      self._unsummed.append(int(step))
      if not self._async:
        self._write_checksums()
    return saved

  def restore(self, target: Any, step: int | None = None, data_iter: Any = None, *,
              data_any_process_count: bool = False) -> tuple[Any, Any]:
    """Restores `target`'s items (shardings from `target`) and the data iterator in place.

    Args:
      target: the state as `jax.ShapeDtypeStruct`s with shardings, of the type
        saved (e.g. `train.step.abstract_state(...)` for a TrainState, or a dict
        of items); any mesh, device or process count.
      step: which step (default: the latest).
      data_iter: a grain iterator whose position is set from the checkpoint
        (skipped when None).
      data_any_process_count: the iterator state means the same on every
        process ('rows' sharding, as `hyperinit.data` and the synthetic
        loaders do), so a state saved by another number of processes may be
        used: process 0's.

    Returns:
      (state, data_iter): state of `target`'s type.

    Raises:
      CheckpointError: missing / incomplete / corrupt checkpoint, or one whose
        tree or shapes differ from `target` (nothing on disk is changed).
    """
    abstract = state_items(target)
    step = self._check_step(step, tuple(abstract) + ('meta',))
    self.verify(step)
    items = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
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
    if 'params' in abstract:
      self._check_shapes(step, abstract['params'])
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
    return state_from_items(target, {k: out[k] for k in abstract}), data_iter

  def _check_shapes(self, step: int, abstract_params: Any, item: str = 'params') -> None:
    """Names the first leaf of `item` whose shape differs between the checkpoint and the run."""
    try:
      handler = ocp.StandardCheckpointHandler()
      saved = handler.metadata(self.directory / str(step) / item)
      handler.close()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'checkpoint {self.directory / str(step)}: unreadable {item} '
                            f'metadata ({_short(e)}). Nothing on disk was changed') from e
    flat_saved = spec_lib.flatten(saved, is_leaf=lambda x: hasattr(x, 'shape'))
    flat_want = spec_lib.flatten(abstract_params)
    missing = sorted(set(flat_want) - set(flat_saved))
    extra = sorted(set(flat_saved) - set(flat_want))
    if missing or extra:
      raise CheckpointError(f'checkpoint {self.directory / str(step)} {item} do not match the '
                            f'model: missing {missing[:5]}, unexpected {extra[:5]}')
    for k, want in flat_want.items():
      if tuple(flat_saved[k].shape) != tuple(want.shape):
        raise CheckpointError(f'checkpoint {self.directory / str(step)}: param {k!r} has shape '
                              f'{tuple(flat_saved[k].shape)}, the model expects {tuple(want.shape)}')

  # --- integrity (the resume policy: `resume.ResumePolicy`) -------------------

  def _write_checksums(self) -> None:
    """Records the checksums of the steps saved since the last call (process 0).

    Called by orbax after it has finalized an async step's items and before it
    renames the temporary directory (so they are inside the committed step), and
    after a synchronous save.
    """
    pending, self._unsummed = self._unsummed, []
    if not self._local or jax.process_index() != 0:
      return
    for step in pending:
      final = os.fspath(self.directory / str(step))
      tmp = [os.fspath(p) for p in self.directory.glob(f'{step}.orbax-checkpoint-tmp*')]
      step_dir = final if os.path.isdir(final) else (tmp[0] if len(tmp) == 1 else None)
      if step_dir is None:    # not written yet (a later async save): next time
        self._unsummed.append(step)
      elif not _checksums.has(step_dir):
        _checksums.write(step_dir)

  def verify(self, step: int, items: tuple[str, ...] | None = None) -> bool:
    """Checks step `step`'s files against the checksums written when it was saved.

    Returns False for a step without checksums (saved by a version before they
    existed, or on an object store).  Raises CheckpointError naming the corrupt file.
    """
    if not self._local:
      return False
    try:
      return _checksums.verify(os.fspath(self.directory / str(step)), items)
    except _checksums.ChecksumError as e:
      raise CheckpointError(f'checkpoint step {step} is corrupt: {e}') from e

  def _data_file(self, step: int) -> epath.Path:
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    return self.directory / str(step) / 'data' / name

  def data_state_available(self, step: int, any_process_count: bool = False) -> bool:
    """Whether the data iterator was saved for this process layout (or for any, with
    `any_process_count`)."""
    if any_process_count:
      return bool(list((self.directory / str(step) / 'data').glob('process_0-of-*.json')))
    return self._data_file(step).exists()

  def wait(self) -> None:
    """Blocks until pending async saves are committed (and their checksums written)."""
    self.manager.wait_until_finished()
    self._write_checksums()

  def close(self) -> None:
    """Waits for pending saves, then releases orbax's threads (a second call does nothing)."""
    if getattr(self, '_closed', False):
      return
    self.wait()
    self.manager.close()
    self._closed = True


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


