"""ViT image-classification training configs.

    --config=configs/vit.py:tiny                 (also: S, B)
    --config=configs/vit.py:tiny,local           minutes on 2 CPU cores, embedded digits set
    --config=configs/vit.py:S,local,steps=100,lr=5e-4

Image size, channels and class count come from the dataset unless set; steps=, batch=,
lr=, seed= override the preset (after `local`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from configs import common


@dataclasses.dataclass(frozen=True)
class Preset:
  model: str                      # model preset (hyperinit.models.preset_names())
  dataset: str                    # hyperinit.data name
  batch: int                      # global batch
  steps: int
  lr: float                       # peak learning rate
  warmup: int
  weight_decay: float
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)   # config.model fields
  mesh: dict[str, int] = dataclasses.field(default_factory=dict)        # config.mesh fields


PRESETS = {
    'tiny': Preset('vit-tiny', 'digits', batch=128, steps=3000, lr=1e-3, warmup=200,
                   weight_decay=1e-4, overrides=dict(patch_size=2)),
    # DeiT-style recipes (Touvron et al. 2021) at 224 px, patch 16
    'S': Preset('vit-s', 'imagenet2012', batch=1024, steps=300_000, lr=1e-3, warmup=10_000,
                weight_decay=0.05),
    'B': Preset('vit-b', 'imagenet2012', batch=1024, steps=300_000, lr=1e-3, warmup=10_000,
                weight_decay=0.05, mesh=dict(data=1, fsdp=-1)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, 'vit', PRESETS, 'tiny', **common.RUN_OPTIONS)
  size, p = args.preset, PRESETS[args.preset]

  cfg = ml_collections.ConfigDict()
  cfg.task = 'classification'
  cfg.model = common.model(
      p.model,
      image_size=common.P(int),   # None: the dataset's image size
      patch_size=common.P(int),   # None: the preset's
      num_channels=common.P(int),  # None: the dataset's
      num_classes=common.P(int),  # None: the dataset's
      pool=common.P(str))         # 'cls' | 'gap' (None: the preset's)
  cfg.model.update(p.overrides)

  d = cfg.data = ml_collections.ConfigDict()
  d.dataset = p.dataset           # hyperinit.data name (digits is embedded), or 'synthetic'
  d.train_split = 'train'
  d.eval_split = common.P(str)    # None: the dataset's (validation if it has one, else test)
  d.data_dir = common.P(str)      # tfds data dir (None: hyperinit.data's default)
  d.worker_count = 0              # grain worker processes

  common.training(cfg, steps=p.steps, batch=p.batch, lr=p.lr, warmup=p.warmup,
                  weight_decay=p.weight_decay, b2=0.999)
  cfg.mesh.update(p.mesh)
  if args.local:
    tiny = size == 'tiny'
    cfg.data.dataset = 'digits'
    cfg.model.image_size, cfg.model.patch_size = None, 2
    cfg.batch_size = min(p.batch, 64)
    cfg.num_train_steps = 3000 if tiny else 20   # tiny: ~2 min on 2 CPU cores
    cfg.optimizer.warmup_steps = min(p.warmup, cfg.num_train_steps // 10)
    cfg.log_every = 100 if tiny else 5
    cfg.eval_every = 500 if tiny else 10
    cfg.eval_batches = -1 if tiny else 2
    cfg.checkpoint.every = 1000 if tiny else 10
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 1, 1
  common.apply_run_options(cfg, args, p.warmup)
  return cfg
