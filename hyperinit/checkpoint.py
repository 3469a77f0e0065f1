"""Every on-disk format of parameters: orbax run checkpoints and "params + config" directories.

Run checkpoints (`Checkpointer`, `<workdir>/checkpoints`) hold one sub-directory
per saved step, each with the items

  params     the model params (orbax StandardSave: sharded, per-shard files)
  opt_state  the optimizer state
  train      {'step': int32 [], 'rng': uint32 [2]}
  data       the grain iterator state, one JSON file per process
  meta       JSON: the model config (`cfg.to_dict()`), the ParamSpec tree, the
             run's config, process count and mesh shape at save time.

A params directory (`save_params` / `save_model`: a clone, a GHN prediction, a
GHN itself) is the same layout with one step (0) and only the items `params`
and `meta`, so everything that reads params reads both: `load_params(path)`
gives `(model_config, params)` from a run workdir, a checkpoint root, one step
directory, a params directory or a Hugging Face directory; this is what
`config.init_from`, the clone CLI and `experiments.predict` use.

Orbax writes each step into a temporary directory and renames it when every
item is complete, so a step directory is either whole or absent (a kill during
an async save leaves only a temporary directory, which is ignored); params
directories are built beside their destination and renamed into place.
Restoring takes target shardings, so a checkpoint written on one mesh / device
count / process count restores onto any other.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from hyperinit import _io, interop, models
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
      options = ocp.CheckpointManagerOptions(
          max_to_keep=int(keep), create=True, enable_async_checkpointing=bool(async_save),
          save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(int(save_every)))
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
    return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

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
          'Nothing on disk was changed; move the broken step directory away to resume from an '
          'earlier one') from e
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
                            f'metadata ({_short(e)}). Nothing on disk was changed; '
                            'move the broken step directory away to resume from an earlier '
                            'one') from e
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
    """Blocks until pending async saves are committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
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


def is_hf_dir(path: str | os.PathLike) -> bool:
  """Whether `path` is a Hugging Face checkpoint directory (has config.json)."""
  return os.path.isfile(os.path.join(os.fspath(path), 'config.json'))


def save_params(path: str | os.PathLike, params: Any, meta: dict[str, Any], *,
                overwrite: bool = False, overwrite_hint: str = 'overwrite=True') -> str:
  """Writes `params` (any pytree of arrays) and JSON `meta` as a params directory, atomically.

  The directory is a checkpoint root with one step, 0, holding the items
  `params` and `meta`: `read_meta`, `restore_params` and (with a model config in
  `meta`) `load_params` and `config.init_from` read it.  An existing non-empty
  `path` is refused unless `overwrite` (the error names `overwrite_hint`).
  """
  with _io.atomic_dir(os.fspath(path), overwrite, overwrite_hint) as tmp:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp, options=options) as manager:
      manager.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                              meta=ocp.args.JsonSave(dict(meta, step=0))),
                   force=True)
      manager.wait_until_finished()
  return os.fspath(path)


def save_model(path: str | os.PathLike, cfg: models.ModelConfig, params: Any, *,
               info: dict[str, Any] | None = None, overwrite: bool = False,
               overwrite_hint: str = 'overwrite=True') -> str:
  """`save_params` for a model: its config and annotations travel in the metadata.

  Args:
    path: output directory (written atomically).
    cfg: the model config; `params` must have `models.param_shapes(cfg)`'s tree.
    params: nested dict of arrays.
    info: extra JSON-able metadata under its own keys (e.g. {'clone': {...}}).
  """
  specs = models.param_specs(cfg)
  spec_lib.check_tree(params, specs, 'params')
  meta = run_meta(cfg, specs)
  meta.update(info or {})
  return save_params(path, params, meta, overwrite=overwrite, overwrite_hint=overwrite_hint)


def _open(path: str | os.PathLike, step: int | None) -> tuple[Checkpointer, int]:
  root, path_step = resolve(path)
  ckpt = Checkpointer(root, read_only=True)
  step = ckpt._check_step(step if step is not None else path_step, PARAMS_ITEMS)  # pylint: disable=protected-access
  return ckpt, step


def read_meta(path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """The metadata of a run checkpoint or params directory (default step: the path's, else
  the latest)."""
  ckpt, step = _open(path, step)
  return ckpt.meta(step)


def read_model_config(path: str | os.PathLike, step: int | None = None) -> models.ModelConfig:
  """The model config recorded at `path` (ours) or in its config.json (Hugging Face)."""
  if is_hf_dir(path):
    return interop.config_from_hf(interop.read_config(path))
  meta = read_meta(path, step)
  if 'model_config' not in meta:
    raise CheckpointError(f'checkpoint {path} has no model_config in its metadata (a GHN? '
                          'load it with hyperinit.logah.saving.load_ghn)')
  return models.config_from_dict(meta['model_config'])


def _targets(shapes: Any, shardings: Any) -> Any:
  if shardings is None:
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: dev, shapes)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def restore_params(path: str | os.PathLike, shapes: Any, step: int | None = None,
                   shardings: Any = None) -> Any:
  """The `params` item at `path`, restored onto `shapes` (a tree of ShapeDtypeStructs).

  Args:
    path: a run workdir, its `checkpoints/` root, one step dir or a params dir.
    shapes: the expected tree (shapes and dtypes; a leaf whose shape differs
      raises naming it).
    step: which step (default: the one in `path`, else the latest).
    shardings: a matching tree of shardings (default: the first local device).
  """
  ckpt, step = _open(path, step)
  target = _targets(shapes, shardings)
  ckpt._check_shapes(step, target)  # pylint: disable=protected-access
  try:
    params = ckpt.manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))).params
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'could not read params from {ckpt.directory / str(step)}: '
                          f'{_short(e)}') from e
  logging.info('loaded params of step %d from %s', step, ckpt.directory)
  return params


def load_params(path: str | os.PathLike, step: int | None = None,
                shardings: Any = None) -> tuple[models.ModelConfig, Any]:
  """(model config, params) from any params source.

  Args:
    path: a trainer workdir, its `checkpoints/` dir, one step dir, a params
      directory (`save_model`: a clone, a GHN prediction) or a Hugging Face
      directory (config.json + safetensors).
    step: which step of our checkpoints (default: the one in `path`, else the
      latest); not for Hugging Face directories.
    shardings: a tree of shardings for the params (default: all on the first
      local device), or a callable `(cfg) -> shardings`.

  Returns:
    (cfg, params): `models.build(cfg).apply({'params': params}, x)` works.
  """
  cfg = read_model_config(path, step)
  if callable(shardings):
    shardings = shardings(cfg)
  shapes = models.param_shapes(cfg)
  if not is_hf_dir(path):
    return cfg, restore_params(path, shapes, step, shardings)
  if step is not None:
    raise ValueError(f'step={step} applies to our checkpoints; {path} is a Hugging Face directory')
  _, hf_params = interop.load_hf(path)
  targets = _targets(shapes, shardings)
  return cfg, jax.tree.map(lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding),
                           hf_params, targets)
