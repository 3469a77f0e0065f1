"""Params directories ("params + config", one step) and every reader of params: ours
(run checkpoints, params directories) and Hugging Face directories.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from hyperinit import _io, interop, models
from hyperinit import spec as spec_lib
from hyperinit.checkpoint.run import (PARAMS_ITEMS, CheckpointError, Checkpointer, _short,
                                      resolve, run_meta)

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
                shardings: Any = None) -> tuple[Any, models.ModelConfig]:
  """(params, model config) from any params source.

  Args:
    path: a trainer workdir, its `checkpoints/` dir, one step dir, a params
      directory (`save_model`: a clone, a GHN prediction) or a Hugging Face
      directory (config.json + safetensors).
    step: which step of our checkpoints (default: the one in `path`, else the
      latest); not for Hugging Face directories.
    shardings: a tree of shardings for the params (default: all on the first
      local device), or a callable `(cfg) -> shardings`.

  Returns:
    (params, cfg), the order every hyperinit loader and transform returns:
    `models.build(cfg).apply({'params': params}, x)` works.
  """
  cfg = read_model_config(path, step)
  if callable(shardings):
    shardings = shardings(cfg)
  shapes = models.param_shapes(cfg)
  if not is_hf_dir(path):
    return restore_params(path, shapes, step, shardings), cfg
  if step is not None:
    raise ValueError(f'step={step} applies to our checkpoints; {path} is a Hugging Face directory')
  hf_params, _ = interop.load_hf(path)
  targets = _targets(shapes, shardings)
  params = jax.tree.map(lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding),
                        hf_params, targets)
  return params, cfg
