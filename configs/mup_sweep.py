"""µTransfer sweeps and the base-HP search (experiments/mup_sweep.py): GPT on the embedded corpus.

    python -m experiments.mup_sweep --config=configs/mup_sweep.py:search --workdir=workdir/mup_search
    python -m experiments.mup_sweep --config=configs/mup_sweep.py:width --workdir=workdir/mup_width
    python -m experiments.mup_sweep --config=configs/mup_sweep.py:depth --workdir=workdir/mup_depth
    python -m experiments.mup_sweep --config=configs/mup_sweep.py:width,smoke --workdir=/tmp/w

Presets: `search` (base HPs and LR at the base model, written to
docs/results/mup_base_hps.json), `width` (widths 64..512 with those base HPs),
`depth` (depths 2..8 at width 64, CompleteP vs SP).  The `smoke` flag shrinks
any of them to a few seconds (tiny models, a handful of steps, no files in docs/);
`steps=N` sets the training length and the warm-up (N // 10) together, e.g. `:width,steps=1000`.
"""

import ml_collections

from configs import common

BASE_HPS_FILE = 'docs/results/mup_base_hps.json'


def get_config(arg=None):
  args = common.parse_arg(arg, 'mup_sweep', ('width', 'depth', 'search'), 'width', smoke=False,
                          steps=int)
  mode = args.preset
  c = ml_collections.ConfigDict()
  c.mode = mode                   # width | depth (sweeps) | search (base HPs at the base model)
  c.widths = (64, 128, 256, 512) if mode == 'width' else (64,)   # embed_dim of each model
  c.depths = (2, 4, 8) if mode == 'depth' else (1,)              # blocks of each model
  c.base_width = 64               # muP base width (where the HPs are tuned)
  c.base_depth = 2 if mode == 'depth' else 1   # muP base depth (depth transfer)
  c.parametrizations = 'sp,mup'   # comma-separated: sp, mup (depth sweep: mup = CompleteP)
  c.seeds = 2                     # init + data-order seeds per point
  c.steps = args.steps or (600 if mode != 'depth' else 200)   # optimizer steps per run
  c.chunk = 50                    # steps per jitted lax.scan call (divergence checked between)
  c.tail_fraction = 0.1           # train-tail loss: mean over the last 10% of the steps
  c.diverge_loss = 7.0            # a chunk's mean training loss above this (or NaN) = diverged
  # LR grid of (param, size): centre + sp_lr_slope x log2(size/base) (SP only) + offsets.
  c.base_log2_lr = -9.0           # muP's centre (and the search's start); base_hps_file overrides
  c.sp_base_log2_lr = -9.0        # SP's centre at the base size; base_hps_file overrides
  c.sp_lr_slope = -1.0 if mode == 'width' else 0.0   # SP window moves with LR ~ 1/width
  c.lr_offsets = ml_collections.ConfigDict({'mup': (-2.0, -1.0, 0.0, 1.0, 2.0),
                                            'sp': (-1.0, 0.0, 1.0) if mode == 'width'
                                            else (-2.0, -1.0, 0.0, 1.0, 2.0)})
  # The search's JSON (base HPs, muP and SP base LRs); '' = the config.mup fields below.
  c.base_hps_file = BASE_HPS_FILE if mode == 'width' else ''
  c.results_file = {'width': 'docs/results/mup_width_sweep.json', 'search': BASE_HPS_FILE,
                    'depth': 'docs/results/mup_depth_sweep.json'}[mode]   # copy of the result

  s = c.search = ml_collections.ConfigDict()
  s.fields = ('output_mult', 'hidden_init_mult', 'readout_init_mult', 'attn_mult', 'embed_mult',
              'input_lr_mult', 'hidden_lr_mult', 'output_lr_mult', 'vector_lr_mult')  # in order
  s.factors = (2.0, 0.5)          # multiply a field by these (first that helps wins)
  s.max_moves = 2                 # at most this many moves per field and direction
  s.min_gain = 0.003              # a move must lower the objective by more than this (nats)
  s.lr_offsets = (-1.0, 0.0, 1.0)   # LR grid around the centre, before and after the HPs
  s.seeds = 1                     # seeds per trial (common random numbers across trials)

  m = c.model = ml_collections.ConfigDict()
  m.preset = 'gpt2-tiny'          # model family (byte vocab 256)
  m.num_heads = 4                 # fixed head count: head_dim grows with width
  m.mlp_ratio = 4                 # mlp_dim = mlp_ratio x width
  m.tie_embeddings = False        # untied readout

  d = c.data = ml_collections.ConfigDict()
  d.dataset = 'pydoc_text'        # embedded corpus (hyperinit.data), 432k training tokens
  d.seq_len = 64                  # tokens per row
  d.batch_size = 8                # rows per step
  d.eval_batch_size = 32          # rows per validation batch (the whole split is evaluated)
  d.data_dir = common.P(str)      # tfds data dir (None: hyperinit.data's default)

  # The trainer's optimizer fields (configs/common.py); learning_rate is swept.
  train = ml_collections.ConfigDict()
  common.training(train, steps=c.steps, batch=d.batch_size, lr=1.0, warmup=c.steps // 10,
                  weight_decay=0.0, clip=1.0, b2=0.95)
  c.optimizer = train.optimizer   # adamw, warm-up then cosine to 0.1 x peak, clip 1, no decay

  # The trainer's config.mup options (base: base_width x base_depth; enabled: the 'mup' runs).
  c.mup = common.mup()
  del c.mup['enabled']
  del c.mup['base']
  # Base-width readout init (the base's std) rather than zero: with it muP at the base is SP
  # exactly, and readout_init_mult is a tunable base HP.
  c.mup.readout_init = 'base'
  if mode == 'depth':
    c.mup.depth_alpha = 1.0       # CompleteP: residual branches x (L / L_base)^-1

  if args.smoke:                  # seconds: tiny models, a few steps, nothing written to docs/
    c.widths = (16, 32) if mode == 'width' else (16,)
    c.depths = (1, 2) if mode == 'depth' else (1,)
    c.base_width, c.base_depth = 16, 1
    m.num_heads = 2
    c.seeds, c.steps, c.chunk = 1, 4, 2
    c.optimizer.warmup_steps = 1
    # two muP LRs where the search's smoke reads them back (width), one where only the
    # CompleteP plumbing is checked (depth)
    c.lr_offsets.mup = (0.0,) if mode == 'depth' else (-1.0, 0.0)
    c.lr_offsets.sp = (0.0,)
    s.fields, s.max_moves, s.lr_offsets = ('output_mult', 'hidden_lr_mult'), 1, (0.0, 1.0)
    c.base_hps_file, c.results_file = '', ''
  return c
