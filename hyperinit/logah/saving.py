"""Saving and loading GHNs and predicted params with orbax (no trainer needed).

A GHN directory holds `params/` (orbax StandardCheckpointer) and
`ghn_config.json`; a predicted-params directory holds `params/` and
`meta.json` ({'model_config': cfg.to_dict(), 'specs': ...}).  JSON files are
written to a temporary name and renamed; orbax finalises its own directories
the same way.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from hyperinit import models
from hyperinit import spec as spec_lib
from hyperinit.logah.ghn import GHNConfig, param_shapes


def _write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _save_tree(path: str, tree: Any) -> None:
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.abspath(path), tree)
  ckpt.wait_until_finished()


def save_ghn(directory: str, cfg: GHNConfig, params: dict) -> None:
  """Writes a GHN (config + params) to `directory` (must not hold params already)."""
  os.makedirs(directory, exist_ok=True)
  _save_tree(os.path.join(directory, 'params'), params)
  _write_json(os.path.join(directory, 'ghn_config.json'), json.loads(cfg.to_json()))


def load_ghn(directory: str) -> tuple[GHNConfig, dict]:
  """(config, params) of a GHN written by `save_ghn`; raises naming what is missing."""
  cfg_path = os.path.join(directory, 'ghn_config.json')
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f'{cfg_path} not found: {directory} is not a saved GHN')
  with open(cfg_path) as f:
    cfg = GHNConfig.from_dict(json.load(f))
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), param_shapes(cfg))
  params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(directory, 'params')),
                                              target)
  return cfg, params


def save_predicted(directory: str, target: models.ModelConfig, params: dict) -> None:
  """Writes predicted params and their model config / annotations to `directory`."""
  spec_lib.check_tree(params, models.param_specs(target), 'predicted params')
  os.makedirs(directory, exist_ok=True)
  _save_tree(os.path.join(directory, 'params'), params)
  _write_json(os.path.join(directory, 'meta.json'),
              {'model_config': target.to_dict(),
               'specs': json.loads(spec_lib.specs_to_json(models.param_specs(target)))})


def load_predicted(directory: str) -> tuple[models.ModelConfig, dict]:
  """(model config, params) written by `save_predicted`."""
  meta_path = os.path.join(directory, 'meta.json')
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: {directory} holds no predicted params')
  with open(meta_path) as f:
    target = models.config_from_dict(json.load(f)['model_config'])
  params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(directory, 'params')),
                                              models.param_shapes(target))
  return target, params
