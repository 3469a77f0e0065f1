"""Language-model training configs.

    --config=configs/lm.py:tiny            (also: small, gpt2, gpt2-medium)
    --config=configs/lm.py:tiny,local      a few-minute run on 2 CPU cores

The `local` modifier keeps the model, shrinks batch / steps / eval and
checkpoints often, so any size can be smoke-tested on a laptop.
"""

from __future__ import annotations

import ml_collections

from configs import common

# size -> (model preset, model overrides, dataset, seq_len, batch, steps, lr, warmup, mesh)
SIZES = {
    # 0.1M params, byte vocab: learns the embedded corpus in minutes on CPU
    'tiny': ('gpt2-tiny', {}, 'pydoc_text', 128, 32, 2000, 3e-3, 100, {}),
    # ~5M params (6 x 256), byte vocab
    'small': ('gpt2', dict(num_layers=6, embed_dim=256, num_heads=4, mlp_dim=1024, max_len=512),
              'pydoc_text', 256, 64, 20_000, 1e-3, 500, {}),
    # GPT-2 124M / 355M (Radford et al. 2019), nanoGPT-like recipe: 0.5M tokens per step
    'gpt2': ('gpt2', {}, 'lm1b', 1024, 512, 100_000, 6e-4, 2000, dict(data=1, fsdp=-1)),
    'gpt2-medium': ('gpt2-medium', {}, 'lm1b', 1024, 512, 100_000, 3e-4, 2000,
                    dict(data=1, fsdp=-1)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p.strip() for p in (arg or 'tiny').split(',') if p.strip()]
  size, mods = parts[0], set(parts[1:])
  if size not in SIZES:
    raise ValueError(f'unknown lm config {size!r}; expected one of {sorted(SIZES)} '
                     '[,local]')
  if mods - {'local'}:
    raise ValueError(f'unknown lm config modifiers {sorted(mods - {"local"})}; expected local')
  preset, over, dataset, seq_len, batch, steps, lr, warmup, mesh = SIZES[size]

  cfg = ml_collections.ConfigDict()
  cfg.task = 'lm'                 # lm | classification
  cfg.model = common.model(
      preset,
      vocab_size=common.P(int),   # None: the dataset's tokenizer size
      max_len=common.P(int))      # None: the preset's (must be >= seq_len for learned positions)
  for k, v in over.items():
    cfg.model[k] = v

  d = cfg.data = ml_collections.ConfigDict()
  d.dataset = dataset             # hyperinit.data name (pydoc_text is embedded), or 'synthetic'
  d.train_split = 'train'
  d.eval_split = common.P(str)    # None: the dataset's (validation if it has one, else test)
  d.seq_len = seq_len             # tokens per example (packed)
  d.data_dir = common.P(str)      # tfds data dir (None: hyperinit.data's default)
  d.tokenizer = common.P(str)     # tokenizer file (None: byte-level)
  d.worker_count = 0              # grain worker processes (0: in the main process)

  common.training(cfg, steps=steps, batch=batch, lr=lr, warmup=warmup, weight_decay=0.1)
  for k, v in mesh.items():
    cfg.mesh[k] = v
  if size == 'tiny':
    cfg.optimizer.weight_decay = 0.0

  if 'local' in mods:
    cfg.batch_size = min(batch, 16 if size == 'tiny' else 4)
    cfg.data.seq_len = min(seq_len, 128)
    cfg.num_train_steps = 2000 if size == 'tiny' else 20   # tiny: ~3 min on 2 CPU cores
    cfg.optimizer.warmup_steps = min(warmup, cfg.num_train_steps // 10)
    cfg.log_every = 20 if size == 'tiny' else 5
    cfg.eval_every = 250 if size == 'tiny' else 10
    cfg.eval_batches = -1 if size == 'tiny' else 2      # -1: the whole validation split
    cfg.checkpoint.every = 500 if size == 'tiny' else 10
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 1, 1
    if size != 'tiny':
      cfg.data.dataset = 'pydoc_text'
  return cfg
