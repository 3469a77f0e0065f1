"""`config.init_from`: start a run from one of our checkpoints or a Hugging Face directory.

`load_init_params` reads the params (sharded as the run's model wants them) and
checks them leaf by leaf against the run's model; `init_from_config` reads only
the recorded model config (to build the run's model when `model.name` is
'init_from').
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from hyperinit import checkpoint as ckpt_lib
from hyperinit import models
from hyperinit import spec as spec_lib
from hyperinit.train import tasks


def arch_diff(a: models.ModelConfig, b: models.ModelConfig) -> dict[str, tuple[Any, Any]]:
  da, db = a.to_dict(), b.to_dict()
  return {k: (da.get(k), db.get(k)) for k in sorted(set(da) | set(db))
          if k not in tasks.RUNTIME_FIELDS and da.get(k) != db.get(k)}


def _is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, 'config.json'))


def init_from_config(path: str, with_params: bool = True) -> tuple[models.ModelConfig, Any]:
  """(model config recorded at `path`, HF params or None)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.init_from={path!r} does not exist')
  if _is_hf_dir(path):
    from hyperinit import interop  # pylint: disable=g-import-not-at-top
    if with_params:
      return interop.load_hf(path)
    return interop.config_from_hf(interop.read_config(path)), None
  root, step = ckpt_lib.resolve(path)
  meta = ckpt_lib.Checkpointer(root, read_only=True).meta(step)
  return models.config_from_dict(meta['model_config']), None


def _check_init_shapes(shapes: Any, model_cfg: models.ModelConfig, path: str) -> None:
  """Raises naming the first leaf whose shape differs from `model_cfg`'s params."""
  spec_lib.check_tree(shapes, models.param_specs(model_cfg), f'init_from {path}')
  have = spec_lib.flatten(shapes)
  for k, want in spec_lib.flatten(models.param_shapes(model_cfg)).items():
    got = tuple(np.shape(have[k]))
    if got != tuple(want.shape):
      raise ValueError(f'init_from {path}: param {k!r} has shape {got}, the model expects '
                       f'{tuple(want.shape)}')


def load_init_params(path: str, model_cfg: models.ModelConfig, param_shardings: Any,
                     hf_params: Any = None) -> Any:
  """Params from an orbax checkpoint of ours or a Hugging Face directory, sharded.

  Raises ValueError if a leaf's shape differs from `model_cfg`'s; other
  config differences are logged.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.init_from={path!r} does not exist')
  if _is_hf_dir(path):
    if hf_params is None:
      from hyperinit.interop import load_hf  # pylint: disable=g-import-not-at-top
      src_cfg, hf_params = load_hf(path)
    else:
      src_cfg = model_cfg
    _check_init_shapes(hf_params, model_cfg, path)
    shapes = models.param_shapes(model_cfg)
    params = jax.tree.map(lambda x, s, sh: jax.device_put(np.asarray(x, s.dtype), sh),
                          hf_params, shapes, param_shardings)
  else:
    root, step = ckpt_lib.resolve(path)
    src_cfg = models.config_from_dict(
        ckpt_lib.Checkpointer(root, read_only=True).meta(step)['model_config'])
    _check_init_shapes(models.param_shapes(src_cfg), model_cfg, path)
    _, params = ckpt_lib.load_params(path, shardings=param_shardings)
  diff = arch_diff(src_cfg, model_cfg)
  if diff:
    logging.warning('init_from %s: model config differs from the run in %s', path, diff)
  return params
