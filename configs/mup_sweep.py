"""µTransfer LR sweep (experiments/mup_sweep.py): GPT on the embedded corpus, SP vs muP.

    python -m experiments.mup_sweep --config=configs/mup_sweep.py --workdir=workdir/mup_sweep
    python -m experiments.mup_sweep --config=configs/mup_sweep.py:local --workdir=/tmp/sweep
"""

import ml_collections

from configs import common


def get_config(arg=None):
  local = common.parse_arg(arg, 'mup_sweep', ('full', 'local'), 'full').preset == 'local'
  c = ml_collections.ConfigDict()
  c.widths = (64, 128, 256) if local else (64, 128, 256, 512)   # embed_dim of each model
  c.base_width = 64               # muP base (the proxy the LR is tuned on)
  c.parametrizations = 'sp,mup'   # comma-separated: sp, mup
  c.log2_lrs = tuple(range(-12, -4)) if local else tuple(range(-13, -4))  # peak LR = 2^x
  c.seeds = 2                     # init + data-order seeds per point
  c.steps = 200                   # optimizer steps per run (fixed budget)
  c.chunk = 25                    # steps per jitted lax.scan call (divergence checked between)
  c.diverge_loss = 7.0            # a chunk's mean training loss above this (or NaN) = diverged
  c.eval_batches = 16             # validation batches of eval_batch_size (<= 0: all)

  m = c.model = ml_collections.ConfigDict()
  m.preset = 'gpt2-tiny'          # model family (byte vocab 256)
  m.num_layers = 2                # blocks
  m.num_heads = 4                 # fixed head count: head_dim grows with width
  m.mlp_ratio = 4                 # mlp_dim = mlp_ratio x width
  m.tie_embeddings = False        # untied readout, zero-initialised under muP

  d = c.data = ml_collections.ConfigDict()
  d.dataset = 'pydoc_text'        # embedded corpus (hyperinit.data)
  d.seq_len = 64                  # tokens per row
  d.batch_size = 8                # rows per step
  d.eval_batch_size = 16          # rows per validation batch
  d.data_dir = common.P(str)      # tfds data dir (None: hyperinit.data's default)

  # The trainer's optimizer fields (configs/common.py); learning_rate is swept.
  train = ml_collections.ConfigDict()
  common.training(train, steps=c.steps, batch=d.batch_size, lr=1.0, warmup=c.steps // 10,
                  weight_decay=0.0, clip=1.0, b2=0.95)
  c.optimizer = train.optimizer   # adamw, warm-up then cosine to 0.1 x peak, clip 1, no decay

  # The trainer's config.mup options (base: base_width; enabled: the 'mup' runs).
  c.mup = common.mup()
  del c.mup['enabled']
  del c.mup['base']
  # Base-width readout init (the base's std, Table 8's other option) rather than zero: with it
  # muP at width 64 is SP exactly, so the two curves share the base width's point.
  c.mup.readout_init = 'base'
  return c
