"""`config.init_from`: start a run from one of our checkpoints or a Hugging Face directory.

Any source `checkpoint.load_params` reads: a run checkpoint, a params directory
(a clone, a GHN prediction) or a Hugging Face directory.  `load_init_params`
reads the params (sharded as the run's model wants them) and checks them leaf by
leaf against the run's model; `init_from_config` reads only the recorded model
config (to build the run's model when `model.name` is 'init_from').
"""

from __future__ import annotations

import os
from typing import Any

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


def init_from_config(path: str) -> models.ModelConfig:
  """The model config recorded at `path` (a checkpoint or params dir of ours, or HF)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.init_from={path!r} does not exist')
  return ckpt_lib.read_model_config(path)


def _check_init_shapes(shapes: Any, model_cfg: models.ModelConfig, path: str) -> None:
  """Raises naming the first leaf whose shape differs from `model_cfg`'s params."""
  spec_lib.check_tree(shapes, models.param_specs(model_cfg), f'init_from {path}')
  have = spec_lib.flatten(shapes)
  for k, want in spec_lib.flatten(models.param_shapes(model_cfg)).items():
    got = tuple(np.shape(have[k]))
    if got != tuple(want.shape):
      raise ValueError(f'init_from {path}: param {k!r} has shape {got}, the model expects '
                       f'{tuple(want.shape)}')


def load_init_params(path: str, model_cfg: models.ModelConfig, param_shardings: Any) -> Any:
  """Params from any `checkpoint.load_params` source (ours or Hugging Face), sharded.

  Raises ValueError if a leaf's shape differs from `model_cfg`'s; other
  config differences are logged.
  """
  src_cfg = init_from_config(path)
  _check_init_shapes(models.param_shapes(src_cfg), model_cfg, path)
  params, _ = ckpt_lib.load_params(path, shardings=param_shardings)
  diff = arch_diff(src_cfg, model_cfg)
  if diff:
    logging.warning('init_from %s: model config differs from the run in %s', path, diff)
  return params
