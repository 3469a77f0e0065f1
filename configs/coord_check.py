"""Coordinate check (experiments/coord_check.py): SP vs muP, Adam and SGD, MLP and Transformer.

    python -m experiments.coord_check --config=configs/coord_check.py:local --workdir=/tmp/cc
"""

import ml_collections

from configs import common


def get_config(arg=None):
  local = common.parse_arg(arg, 'coord_check', ('full', 'local'), 'full').preset == 'local'
  c = ml_collections.ConfigDict()
  c.models = 'mlp,transformer'   # comma-separated: mlp, transformer
  c.optimizers = 'adam,sgd'      # comma-separated: adam, sgd
  c.steps = 3                    # record t = 1..steps (after 0..steps-1 updates)
  c.seeds = 4 if local else 8    # seeds averaged (vmapped: nearly free)
  c.readout = 'zero'             # muP readout init: zero | base (untied heads only)

  c.mlp = ml_collections.ConfigDict()
  c.mlp.widths = (64, 256, 1024) if local else (64, 128, 256, 512, 1024, 2048)  # hidden widths
  c.mlp.base_width = 64          # muP base width
  c.mlp.depth = 2                # hidden layers: 48 -> w -> w -> 10
  c.mlp.batch = 64               # Gaussian inputs, random labels
  c.mlp.lr_adam = 0.01           # Adam learning rate (large, as the paper's check)
  c.mlp.lr_sgd = 1.0             # SGD learning rate

  c.transformer = ml_collections.ConfigDict()
  c.transformer.widths = (64, 128, 256) if local else (64, 128, 256, 512)  # embed_dim (mlp 4x)
  c.transformer.base_width = 64  # muP base width
  c.transformer.preset = 'gpt2-tiny'  # model family and vocab (byte-level, 256)
  c.transformer.num_layers = 2   # blocks
  c.transformer.num_heads = 4    # fixed head count: head_dim grows with width
  c.transformer.tie_embeddings = False  # untied head can be zero-initialised
  c.transformer.batch = 1        # sequences of random tokens (few tokens: see docs/mup.md)
  c.transformer.seq_len = 8      # tokens per sequence
  c.transformer.lr_adam = 0.01   # Adam learning rate
  c.transformer.lr_sgd = 0.3     # SGD learning rate
  return c
