"""Saving and loading GHNs, in `hyperinit.checkpoint`'s params-directory format.

A saved GHN is a params directory (`checkpoint.save_params`) whose metadata
holds {'ghn_config': GHNConfig fields}; predicted target params are saved like
any model (`checkpoint.save_model`) and read by `checkpoint.load_params` and
`config.init_from`.
"""

from __future__ import annotations

import json

from hyperinit import checkpoint as ckpt_lib
from hyperinit.logah.ghn import GHNConfig, param_shapes


def save_ghn(directory: str, cfg: GHNConfig, params: dict, *, overwrite: bool = False) -> str:
  """Writes a GHN (config + params) to `directory`, atomically (must be new or empty)."""
  return ckpt_lib.save_params(directory, params, {'ghn_config': json.loads(cfg.to_json())},
                              overwrite=overwrite)


def load_ghn(directory: str) -> tuple[GHNConfig, dict]:
  """(config, params) of a GHN written by `save_ghn`; raises naming what is missing."""
  try:
    meta = ckpt_lib.read_meta(directory)
  except (ckpt_lib.CheckpointError, FileNotFoundError) as e:
    raise FileNotFoundError(f'{directory} is not a saved GHN: {e}') from e
  if 'ghn_config' not in meta:
    raise FileNotFoundError(f'{directory} is not a saved GHN: its metadata has no ghn_config '
                            '(params of a model? load them with checkpoint.load_params)')
  cfg = GHNConfig.from_dict(meta['ghn_config'])
  return cfg, ckpt_lib.restore_params(directory, param_shapes(cfg))
