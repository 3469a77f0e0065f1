"""Predicting a model's params with a saved GHN and writing them: `experiments/predict.py`'s logic.

    target = predict_job.resolve_target('L6-D128-H4,vocab_size=512', 'runs/ghn/ghn')
    predict_job.predict_to(out, target, ghn_cfg, ghn_params, fmt='orbax')

Targets (`--target`), one of
  a model preset              gpt2-tiny, vit-s16, ... (`models.preset_names()`)
  the GHN's own notation      L<layers>-D<width>-H<heads>[-P<patch>][-M<mlp>], as its eval log
                              names held-out targets (`logah.tasks.parse_target`); -P makes a ViT.
                              The task fields (vocabulary, max_len, image size, classes) come from
                              the GHN's training config (`<ghn_dir>/../checkpoints`, written by
                              `train.ghn.train_ghn`), so a name means what it meant in the eval
                              log; without one, from the CPU pools' defaults (`gpt-cpu`, `vit-cpu`).
followed by `,key=value` overrides of any model config field (`num_layers=4,vocab_size=512`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections
from absl import logging
from flax import traverse_util

from hyperinit import checkpoint as ckpt_lib
from hyperinit import errors, interop, models
from hyperinit.logah import ghn as ghn_lib, samplers, tasks
from hyperinit.train import memory

NOTATION = 'L<layers>-D<width>-H<heads>[-P<patch>][-M<mlp>]'
# The pools whose task fields a GHN-notation target takes when no training config is found.
DEFAULT_POOLS = {'vit': 'vit-cpu', 'gpt': 'gpt-cpu'}


def split_target(text: str) -> tuple[str, list[str]]:
  """'L6-D128-H4,vocab_size=512' -> ('L6-D128-H4', ['vocab_size=512'])."""
  name, *items = [s.strip() for s in str(text or '').split(',')]
  if not name:
    raise errors.UserInputError(f'--target {text!r}: expected a preset name or {NOTATION}, '
                                'then optional ,key=value overrides')
  return name, [s for s in items if s]


def training_config(ghn_dir: str | None) -> Any | None:
  """The run config of the GHN training run that wrote `ghn_dir` (`<workdir>/ghn`), if any."""
  if not ghn_dir:
    return None
  workdir = os.path.dirname(os.path.realpath(ghn_dir))
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return None
  try:
    config = ckpt_lib.read_meta(workdir).get('config')
  except (ckpt_lib.CheckpointError, FileNotFoundError, ValueError):
    return None   # no readable step: the GHN itself still loads; fall back to the defaults
  return ml_collections.ConfigDict(config) if config and 'pool' in config else None


def _from_notation(name: str, ghn_dir: str | None) -> models.ModelConfig:
  config = training_config(ghn_dir)
  if config is not None:
    # the same path the training run's eval took for its held-out targets
    with config.unlocked():
      config.finetune = ml_collections.ConfigDict({'targets': name})
    return tasks.targets(config)[name]
  kind = 'vit' if '-P' in name else 'gpt'
  pool = DEFAULT_POOLS[kind]
  spec = samplers.POOLS[pool]
  logging.info('--target %s: no GHN training config found beside --ghn_dir; task fields from '
               'pool %r (%s)', name, pool,
               f'{spec.image_size}x{spec.image_size}x{spec.num_channels} images, '
               f'{spec.num_classes} classes' if kind == 'vit'
               else f'vocab {spec.vocab_size}, max_len {spec.max_len}')
  return tasks.parse_target(name, spec)


def _typed(cfg: models.ModelConfig, key: str, raw: str) -> Any:
  current = getattr(cfg, key)
  if raw.lower() == 'none':
    return None
  if isinstance(current, bool):
    if raw.lower() not in ('true', 'false'):
      raise errors.UserInputError(f'--target override {key}={raw!r}: expected true or false')
    return raw.lower() == 'true'
  kinds = (type(current),) if current is not None else (int, float)
  for kind in kinds:
    try:
      return kind(raw)
    except ValueError:
      continue
  if current is None or isinstance(current, str):
    return raw
  raise errors.UserInputError(f'--target override {key}={raw!r}: expected a '
                              f'{type(current).__name__}')


def apply_overrides(cfg: models.ModelConfig, items: list[str]) -> models.ModelConfig:
  """`cfg` with 'key=value' items applied (each value typed like the field it replaces)."""
  fields = {f.name for f in dataclasses.fields(cfg)}
  over = {}
  for item in items:
    key, sep, raw = item.partition('=')
    key = key.strip()
    if not sep or not key:
      raise errors.UserInputError(f'--target item {item!r}: expected key=value, e.g. '
                                  'num_layers=4')
    if key not in fields:
      raise errors.UnknownKeyError(f'--target override {key!r}: {type(cfg).__name__} has no such '
                                   f'field; fields: {", ".join(sorted(fields))}')
    over[key] = _typed(cfg, key, raw.strip())
  return cfg.replace(**over) if over else cfg


def resolve_target(text: str, ghn_dir: str | None = None) -> models.ModelConfig:
  """The model config `--target` names (see the module docstring)."""
  name, items = split_target(text)
  if name in models.preset_names():
    cfg = models.get_config(name)
  elif name.startswith('L') and '-D' in name:
    cfg = _from_notation(name, ghn_dir)
  else:
    raise errors.UserInputError(f'--target {name!r} is neither a model preset '
                                f'({", ".join(models.preset_names())}) nor {NOTATION}, e.g. '
                                'L6-D128-H4 or L6-D128-H4-P2')
  return apply_overrides(cfg, items)


def widest(target: models.ModelConfig) -> tuple[int, str]:
  """(the largest dimension of any leaf of `target` but the layer axis, that leaf's path)."""
  specs = traverse_util.flatten_dict(models.param_specs(target), sep='/')
  shapes = traverse_util.flatten_dict(models.param_shapes(target), sep='/')
  best = (0, '')
  for path, s in specs.items():
    dims = [int(d) for d, ax in zip(shapes[path].shape, s.axes) if ax != 'layers']
    if dims and max(dims) > best[0]:
      best = (max(dims), path)
  return best


def wrap_warning(ghn_cfg: ghn_lib.GHNConfig, target: models.ModelConfig) -> str | None:
  """The warning for a target wider than a LoGAH GHN's K = max_dim (None: no wrap-around)."""
  if ghn_cfg.decoder != 'logah':
    return None   # GHN-3 tiles its chunk at every width: nothing new happens past a size
  n, path = widest(target)
  if n <= ghn_cfg.max_dim:
    return None
  return (f'target dimension {n} (leaf {path}) exceeds the GHN\'s max_dim K = {ghn_cfg.max_dim}: '
          f'factor rows past K wrap around (row i + K starts equal to row i); a GHN with '
          f'max_dim >= {n} avoids it (docs/logah.md)')


def check_memory(target: models.ModelConfig, limit: int | None = None) -> None:
  """Refuses a target whose predicted params (and the copy written) exceed the memory."""
  need = 2 * memory.tree_bytes(models.param_shapes(target))
  memory.check_fits(need, f'predicting {models.count_params(target):,} params', limit,
                    device_need=need // 2)


def predict_to(out: str, target: models.ModelConfig, ghn_cfg: ghn_lib.GHNConfig, params: Any, *,
               fmt: str = 'orbax', overwrite: bool = False, info: dict[str, Any] | None = None
               ) -> Any:
  """Predicts `target`'s params with the GHN and writes them to `out` (atomically).

  fmt 'orbax': a params directory (`checkpoint.save_model`, read by init_from);
  'hf': a Hugging Face directory.  Returns the predicted params.
  """
  why = wrap_warning(ghn_cfg, target)
  if why:
    logging.warning('%s', why)
  predicted = ghn_lib.predict(ghn_cfg, params, target)
  if fmt == 'hf':
    interop.save_hf(out, target, predicted, overwrite=overwrite)
  else:
    ckpt_lib.save_model(out, target, predicted, info=info, overwrite=overwrite,
                        overwrite_hint='--overwrite')
  return predicted
