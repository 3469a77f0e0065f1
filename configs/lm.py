"""Language-model training configs.

    --config=configs/lm.py:tiny                  (also: small, gpt2, gpt2-medium)
    --config=configs/lm.py:tiny,local            a few-minute run on 2 CPU cores
    --config=configs/lm.py:small,local,steps=200,lr=3e-3,batch=8,seed=1

`local` keeps the model, shrinks batch / steps / eval and checkpoints often, so any
size can be smoke-tested on a laptop; steps=, batch=, lr=, seed= override the result.
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
  seq_len: int
  batch: int                      # global batch
  steps: int
  lr: float                       # peak learning rate
  warmup: int
  weight_decay: float = 0.1
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)   # config.model fields
  mesh: dict[str, int] = dataclasses.field(default_factory=dict)        # config.mesh fields
  grad_accum: int = 1             # microbatches per update (the global batch is accumulated)


PRESETS = {
    # 0.1M params, byte vocab: learns the embedded corpus in minutes on CPU
    'tiny': Preset('gpt2-tiny', 'pydoc_text', seq_len=128, batch=32, steps=2000, lr=3e-3,
                   warmup=100, weight_decay=0.0),
    # ~5M params (6 x 256), byte vocab
    'small': Preset('gpt2', 'pydoc_text', seq_len=256, batch=64, steps=20_000, lr=1e-3,
                    warmup=500, overrides=dict(num_layers=6, embed_dim=256, num_heads=4,
                                               mlp_dim=1024, max_len=512)),
    # GPT-2 124M / 355M (Radford et al. 2019), nanoGPT-like recipe: 0.5M tokens per step,
    # accumulated over 32 microbatches of 16 sequences (as nanoGPT accumulates), so one step
    # fits a 4-chip slice (v5e:2x2: 8 microbatches of 64 need 18.2 GB per chip); fewer
    # microbatches on bigger slices (--config.grad_accum_steps).
    'gpt2': Preset('gpt2', 'lm1b', seq_len=1024, batch=512, steps=100_000, lr=6e-4,
                   warmup=2000, mesh=dict(data=1, fsdp=-1), grad_accum=32),
    'gpt2-medium': Preset('gpt2-medium', 'lm1b', seq_len=1024, batch=512, steps=100_000,
                          lr=3e-4, warmup=2000, mesh=dict(data=1, fsdp=-1), grad_accum=32),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, 'lm', PRESETS, 'tiny', **common.RUN_OPTIONS)
  size, p = args.preset, PRESETS[args.preset]

  cfg = ml_collections.ConfigDict()
  cfg.task = 'lm'                 # lm | classification
  cfg.model = common.model(
      p.model,
      vocab_size=common.P(int),   # None: the dataset's tokenizer size
      max_len=common.P(int))      # None: the preset's (must be >= seq_len for learned positions)
  cfg.model.update(p.overrides)

  d = cfg.data = ml_collections.ConfigDict()
  d.dataset = p.dataset           # hyperinit.data name (pydoc_text is embedded), or 'synthetic'
  d.train_split = 'train'
  d.eval_split = common.P(str)    # None: the dataset's (validation if it has one, else test)
  d.seq_len = p.seq_len           # tokens per example (packed)
  d.data_dir = common.P(str)      # tfds data dir (None: hyperinit.data's default)
  d.tokenizer = common.P(str)     # tokenizer file (None: byte-level)
  d.worker_count = 0              # grain worker processes (0: in the main process)

  common.training(cfg, steps=p.steps, batch=p.batch, lr=p.lr, warmup=p.warmup,
                  weight_decay=p.weight_decay)
  cfg.mesh.update(p.mesh)
  cfg.grad_accum_steps = p.grad_accum
  if p.grad_accum > 1:
    cfg.eval_batch_size = p.batch // p.grad_accum   # eval needs no whole-batch step either

  if args.local:
    tiny = size == 'tiny'
    cfg.batch_size = min(p.batch, 16 if tiny else 4)
    cfg.data.seq_len = min(p.seq_len, 128)
    cfg.num_train_steps = 2000 if tiny else 20   # tiny: ~3 min on 2 CPU cores
    cfg.optimizer.warmup_steps = min(p.warmup, cfg.num_train_steps // 10)
    cfg.log_every = 20 if tiny else 5
    cfg.eval_every = 250 if tiny else 10
    cfg.eval_batches = -1 if tiny else 2      # -1: the whole validation split
    cfg.checkpoint.every = 500 if tiny else 10
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 1, 1
    cfg.grad_accum_steps, cfg.eval_batch_size = 1, None
    cfg.data.dataset = 'pydoc_text'
  common.apply_run_options(cfg, args, p.warmup)
  return cfg
