"""ViT image-classification training configs.

    --config=configs/vit.py:tiny           (also: S, B)
    --config=configs/vit.py:tiny,local     minutes on 2 CPU cores, embedded digits set

Image size, channels and class count come from the dataset unless set.
"""

from __future__ import annotations

import ml_collections

from configs import common

# size -> (model preset, overrides, dataset, batch, steps, lr, warmup, weight decay, mesh)
SIZES = {
    'tiny': ('vit-tiny', dict(patch_size=2), 'digits', 128, 3000, 1e-3, 200, 1e-4, {}),
    # DeiT-style recipes (Touvron et al. 2021) at 224 px, patch 16
    'S': ('vit-s', {}, 'imagenet2012', 1024, 300_000, 1e-3, 10_000, 0.05, {}),
    'B': ('vit-b', {}, 'imagenet2012', 1024, 300_000, 1e-3, 10_000, 0.05,
          dict(data=1, fsdp=-1)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p.strip() for p in (arg or 'tiny').split(',') if p.strip()]
  size, mods = parts[0], set(parts[1:])
  if size not in SIZES:
    raise ValueError(f'unknown vit config {size!r}; expected one of {sorted(SIZES)} [,local]')
  if mods - {'local'}:
    raise ValueError(f'unknown vit config modifiers {sorted(mods - {"local"})}; expected local')
  preset, over, dataset, batch, steps, lr, warmup, wd, mesh = SIZES[size]

  cfg = ml_collections.ConfigDict()
  cfg.task = 'classification'
  cfg.model = common.model(
      preset,
      image_size=common.P(int),   # None: the dataset's image size
      patch_size=common.P(int),   # None: the preset's
      num_channels=common.P(int),  # None: the dataset's
      num_classes=common.P(int),  # None: the dataset's
      pool=common.P(str))         # 'cls' | 'gap' (None: the preset's)
  for k, v in over.items():
    cfg.model[k] = v

  d = cfg.data = ml_collections.ConfigDict()
  d.dataset = dataset             # hyperinit.data name (digits is embedded), or 'synthetic'
  d.train_split = 'train'
  d.eval_split = common.P(str)    # None: the dataset's (validation if it has one, else test)
  d.data_dir = common.P(str)      # tfds data dir (None: hyperinit.data's default)
  d.worker_count = 0              # grain worker processes

  common.training(cfg, steps=steps, batch=batch, lr=lr, warmup=warmup, weight_decay=wd,
                  b2=0.999)
  for k, v in mesh.items():
    cfg.mesh[k] = v
  if 'local' in mods:
    cfg.data.dataset = 'digits'
    cfg.model.image_size, cfg.model.patch_size = None, 2
    cfg.batch_size = min(batch, 64)
    cfg.num_train_steps = 3000 if size == 'tiny' else 20   # tiny: ~2 min on 2 CPU cores
    cfg.optimizer.warmup_steps = min(warmup, cfg.num_train_steps // 10)
    cfg.log_every = 100 if size == 'tiny' else 5
    cfg.eval_every = 500 if size == 'tiny' else 10
    cfg.eval_batches = -1 if size == 'tiny' else 2
    cfg.checkpoint.every = 1000 if size == 'tiny' else 10
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 1, 1
  return cfg
