"""LoGAH / GHN-3 meta-training and the fine-tuning comparison.

    python -m experiments.train_ghn --config=configs/ghn.py:vit_local --workdir=DIR
    python -m experiments.train_ghn --config=configs/ghn.py:gpt_local --config.ghn.decoder=ghn3 ...
    python -m experiments.ghn_experiment --config=configs/ghn.py:experiment --workdir=DIR

Variants:
  vit_local, gpt_local   CPU scale: pools of 64 distinct architectures (depth 2-4, width 64-96,
                         4/8 heads, MLP ratio 2-4) on the embedded digits / pydoc_text sets;
                         held-out targets 6 x 128 (and 5 x 112 for GPTs): deeper and wider.
  smoke, smoke_gpt       a few seconds of CPU: 1-layer, 16-32 wide pools (CI).
  vit, gpt               paper-like: ViTs-1K / GPTs-1K pools and the reference GHN sizes, for
                         accelerators (data: the embedded sets unless --config.data.dataset=...).
  experiment             both CPU pools x {logah, ghn3} (one GHN each; GPT GHNs 6000 meta-steps,
                         ViT GHNs 2000), then fine-tuning of every
                         held-out target from random init (2 LRs) and each GHN (2 LRs) x 3 seeds,
                         plus LoGAH's prediction at half the width, HyperCloned 2x ('logah-clone'),
                         and LoGAH's prediction outside the blocks only ('logah-io').
  experiment_smoke       the same code path at smoke size, 2 seeds (CI, tests/ghn_train_test.py).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from configs import common

P = config_dict.placeholder


def _ghn(**over) -> ml_collections.ConfigDict:
  """The GHN (hyperinit.logah.GHNConfig fields)."""
  g = ml_collections.ConfigDict()
  g.decoder = 'logah'           # 'logah' (low-rank) | 'ghn3' (tiled-chunk baseline, same encoder)
  g.hidden = 32                 # node embedding width
  g.layers = 2                  # Graphormer layers
  g.heads = 4                   # Graphormer heads
  g.mlp_ratio = 4               # Graphormer MLP width / hidden
  g.rank = 16                   # LoGAH rank r
  # LoGAH K (>= the widest dimension predicted).  K = 32768 (the reference's) was tried for the
  # CPU GHNs on 2026-12-07 and did not help: held-out 128-wide ViTs still at chance, 96-wide ones
  # 20% instead of 25% (docs/logah.md, "Width extrapolation").
  g.max_dim = 512
  g.chunk = 32                  # GHN-3 chunk c (weights are tiled c x c blocks)
  g.max_spd = 64                # shortest-path distances clipped here
  g.max_degree = 16             # in/out degrees clipped here
  g.normalize = 'init'          # init (each leaf to its own init std) | fan_in | std | none
  g.beta = 2.0                  # fan-in scaling gain (mode fan_in; GHN-3: 2)
  g.std = P(float)              # mode std: the one std (None: the target's init_std, 0.02)
  g.update(over)
  return g


def _meta(**over) -> ml_collections.ConfigDict:
  """Meta-optimisation (hyperinit.logah.meta.MetaConfig fields; total_steps = num_steps)."""
  m = ml_collections.ConfigDict()
  m.lr = 1e-3                   # peak learning rate (AdamW)
  m.weight_decay = 1e-2         # AdamW decoupled weight decay on GHN params
  m.warmup_steps = 25           # linear warm-up
  m.end_lr_frac = 0.01          # cosine decay to this fraction of lr at num_steps
  m.clip = 5.0                  # global-norm gradient clipping
  m.ema = 0.999                 # EMA decay of the GHN params (0: off)
  m.ema_warmup = True           # decay min(ema, (1 + t) / (10 + t)): short runs are not stuck near init
  m.l2 = 3e-5                   # weight of the sum of per-leaf L2 norms of the predicted params
  m.noise = 0.0                 # Gaussian noise on predicted weights (fraction of init std), fresh
                                # each step: the GHN learns for a noisy start (noise.add_noise)
  # LoGAH: decode every target through a fresh random permutation of the first N of the K
  # channel rows (0: off), so that rows past the pool's widest dimension are trained too
  # (ghn.channel_permutation).  Off: with N = 128 or 512 both CPU GHNs stayed on their trivial
  # plateau for 2000 steps (docs/logah.md, "Third pass").
  m.permute_channels = 0
  m.update(over)
  return m


def _pool(name: str, **over) -> ml_collections.ConfigDict:
  """The architecture pool (hyperinit.logah.samplers)."""
  p = ml_collections.ConfigDict()
  p.name = name                 # samplers.POOLS name: vit-cpu | gpt-cpu | vits1k | gpts1k
  p.size = 64                   # architectures drawn (distinct)
  p.meta_batch = 4              # architectures per meta-step (one fixed group = one compile)
  p.seed = 0                    # pool draw seed (the same pool for every run seed)
  p.scan_layers = False         # sampled models scan their blocks (faster compiles when deep)
  # PoolSpec overrides (None: the named pool's); the task fields come from the dataset.
  p.depths = P(tuple)           # (min, max) depth, inclusive
  p.widths = P(tuple)           # ((min depth, width lo, width hi), ...), first match applies
  p.width_step = P(int)         # width grid step
  p.heads = P(tuple)            # head counts (those dividing the width)
  p.mlp_ratios = P(tuple)       # MLP width / width choices
  p.patch_sizes = P(tuple)      # ViT patch sizes (those dividing the image size)
  p.update(over)
  return p


def _data(dataset: str, **over) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.dataset = dataset           # hyperinit.data name: digits / pydoc_text (embedded), cifar10, lm1b...
  d.data_dir = P(str)           # tfds data dir (None: hyperinit.data's default)
  d.train_split = 'train'
  d.eval_split = P(str)         # None: the dataset's eval split (validation, else test)
  d.batch_size = 64             # examples (images or sequences) per meta-step, shared by the group
  d.seq_len = 64                # LM tokens per row (also the GPTs' max_len)
  d.eval_batch_size = 120       # examples per eval batch
  d.eval_batches = 3            # eval batches (digits validation: 3 x 120 = all 360)
  d.update(over)
  return d


def _finetune(cfg: ml_collections.ConfigDict, task: str, targets: str, *,
              batch: int) -> ml_collections.ConfigDict:
  """Fine-tuning comparison: a trainer config (configs/common.py fields) for `train.setup`.

  The same optimizer, batches and eval batches for every init; data fields
  follow `cfg.data` (field references, so --config.data.dataset=... moves both).
  """
  f = ml_collections.ConfigDict()
  f.targets = targets           # held-out targets 'L<depth>-D<width>-H<heads>[-P<patch>][-M<mlp>]', comma-separated
  f.eval_at = (0, 25, 100, 300)  # table columns: evaluate after these steps (and after num_train_steps)
  f.task = task                 # trainer task: classification (ViTs) | lm (GPTs)
  f.model = common.model('')    # unused: the model is the held-out target
  d = f.data = ml_collections.ConfigDict()
  d.dataset = cfg.data.get_ref('dataset')
  d.data_dir = cfg.data.get_ref('data_dir')
  d.seq_len = cfg.data.get_ref('seq_len')
  d.train_split = cfg.data.get_ref('train_split')
  d.eval_split = cfg.data.get_ref('eval_split')
  d.worker_count = 0
  common.training(f, steps=300, batch=batch, lr=1e-3, warmup=10, weight_decay=1e-2, clip=1.0,
                  b2=0.999)
  f.eval_every = 25             # also evaluate every N steps (plot points; 0: off)
  f.eval_batch_size = cfg.data.get_ref('eval_batch_size')
  f.eval_batches = cfg.data.get_ref('eval_batches')
  f.num_devices = 1             # devices of the fine-tuning mesh (0: all); CPU targets are small
  return f


def _base(kind: str) -> ml_collections.ConfigDict:
  """CPU scale (the *_local variants): sized so that one GHN meta-trains in ~10 min on 2 cores."""
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0                  # GHN init, data order, group order
  # Meta-training steps (16 groups: each seen 125 times).  A GPT GHN sits at the unigram loss
  # for its first ~300-400 steps even on two fixed architectures (measured; docs/logah.md), so the
  # 800 steps used before stopped on that plateau.
  cfg.num_steps = 2000
  cfg.log_every = 25            # progress line (with ETA) + train metrics
  cfg.eval_every = 1000         # eval of the EMA GHN (also at step 0 and at the end; <= 0: end only)
  cfg.eval_pool_groups = 4      # pool groups evaluated (each is one more compile); 0: all
  cfg.fast_compile = False      # compile meta / eval steps with XLA opt level 0 (CPU: ~2.5x faster
                                # compiles, slower steps; for smoke runs)
  cfg.eval_params = 'ema'       # evaluate / export the 'ema' or the raw 'params'
  cfg.eval_targets = True       # eval also predicts the held-out targets (finetune.targets)
  cfg.profile_steps = P(tuple)  # (a, b): a jax.profiler trace of meta-steps [a, b) in workdir/tb
  cfg.ghn = _ghn()
  cfg.meta = _meta()
  # Scanned blocks: one compiled block per architecture, ~1.5x shorter compiles of a group.
  if kind == 'vit':
    cfg.pool = _pool('vit-cpu', scan_layers=True)
    cfg.data = _data('digits')
    # Every matrix at the init std, no per-node gain: with mode 'init' both ViT GHNs shrank every
    # gain (to 0.21) and sat at the uniform predictor (pool loss 2.30 from step ~100 to 2000);
    # with 'std' the LoGAH GHN's pool loss was 2.15 (accuracy 20%) at step 600 (2026-12-07).
    cfg.ghn.normalize = 'std'
    cfg.finetune = _finetune(cfg, 'classification', 'L6-D128-H4-P2', batch=64)
  else:
    cfg.pool = _pool('gpt-cpu', scan_layers=True)
    cfg.data = _data('pydoc_text', batch_size=16, eval_batch_size=32, eval_batches=8)
    cfg.finetune = _finetune(cfg, 'lm', 'L6-D128-H4,L5-D112-H4', batch=16)
  # Device mesh of meta-training (hyperinit.train.ghn_step): a meta-batch's targets split over
  # 'data', each target's rows over 'fsdp', the GHN's params ZeRO-split over 'fsdp' by their
  # specs; tensor must be 1.  Default one device; -1 on an axis takes the rest of the devices.
  mesh = cfg.mesh = ml_collections.ConfigDict()
  mesh.data = 1
  mesh.fsdp = 1
  mesh.tensor = 1
  mesh.rules = P(str)           # logical-axis rule overrides (sharding.parse_rules), e.g. 'embed:'
  c = cfg.checkpoint = ml_collections.ConfigDict()
  c.every = 250                 # save every N steps (and at the end and on SIGTERM)
  c.keep = 2                    # newest N checkpoints kept
  c.async_save = True           # write in the background
  return cfg


def _smoke(cfg: ml_collections.ConfigDict, kind: str) -> ml_collections.ConfigDict:
  cfg.num_steps = 40
  cfg.fast_compile = True
  cfg.log_every = 10
  cfg.eval_every = 20
  cfg.ghn.update(hidden=16, layers=1, heads=2, rank=4, max_dim=128, chunk=16)
  cfg.meta.update(lr=3e-3, warmup_steps=5)
  cfg.eval_every = 20
  cfg.eval_pool_groups = 0
  cfg.pool.update(size=2, meta_batch=2, depths=(1, 1), widths=((0, 16, 32),), width_step=16,
                  heads=(2,), mlp_ratios=(2,), scan_layers=False)
  cfg.checkpoint.every = 20
  if kind == 'vit':
    cfg.pool.patch_sizes = (4,)
    cfg.data.update(batch_size=32, eval_batches=1)
    cfg.finetune.update(targets='L2-D32-H2-P4', num_train_steps=12, eval_at=(0, 5), eval_every=0,
                        batch_size=32)
  else:
    cfg.data.update(batch_size=8, seq_len=16, eval_batch_size=16, eval_batches=2)
    cfg.finetune.update(targets='L2-D32-H2', num_train_steps=12, eval_at=(0, 5), eval_every=0,
                        batch_size=8)
  return cfg


def _paper(cfg: ml_collections.ConfigDict, kind: str) -> ml_collections.ConfigDict:
  """ViTs-1K / GPTs-1K and the reference GHN sizes (METHODS.md §3); for accelerators."""
  cfg.num_steps = 100_000
  cfg.log_every = 100
  cfg.eval_every = 5_000
  cfg.meta.update(lr=4e-4, warmup_steps=1_000, ema_warmup=False)
  cfg.pool.update(name='vits1k' if kind == 'vit' else 'gpts1k', size=1000, meta_batch=8,
                  scan_layers=True)
  cfg.checkpoint.update(every=2_000, keep=3)
  cfg.ghn.update(max_dim=32768, rank=32, chunk=64)
  if kind == 'vit':
    cfg.ghn.update(hidden=128, layers=5, heads=16)
    cfg.data.update(batch_size=128, eval_batch_size=128, eval_batches=20)
    # ViT-S / ViT-B-like widths and depths (12 layers), patch 2 on the 8x8 digits.
    cfg.finetune.update(targets='L12-D384-H6-P2,L12-D768-H12-P2', num_train_steps=2000,
                        eval_at=(0, 25, 100, 500), eval_every=100, batch_size=128)
  else:
    cfg.ghn.update(hidden=64, layers=3, heads=8)
    cfg.data.update(batch_size=32, seq_len=256, eval_batch_size=32, eval_batches=20)
    # GPT-2 S / M-like widths and depths with the dataset's vocabulary.
    cfg.finetune.update(targets='L12-D768-H12,L24-D1024-H16', num_train_steps=2000,
                        eval_at=(0, 25, 100, 500), eval_every=100, batch_size=32)
    cfg.finetune.optimizer.learning_rate = 3e-4
  cfg.finetune.num_devices = 0
  return cfg


def _single(arg: str) -> ml_collections.ConfigDict:
  kind = 'gpt' if arg.startswith('gpt') or arg.endswith('_gpt') else 'vit'
  cfg = _base(kind)
  if arg in ('vit_local', 'gpt_local'):
    return cfg
  if arg in ('smoke', 'smoke_gpt'):
    return _smoke(cfg, kind)
  if arg in ('vit', 'gpt'):
    return _paper(cfg, kind)
  raise ValueError(f'unknown ghn config {arg!r}; expected one of {sorted(VARIANTS)}')


def _experiment(pools: dict[str, str], seeds: tuple[int, ...]) -> ml_collections.ConfigDict:
  """hyperinit.studies.ghn_experiment: GHNs per task, then the fine-tuning comparison."""
  cfg = ml_collections.ConfigDict()
  cfg.pools = ml_collections.ConfigDict({k: _single(v) for k, v in pools.items()})  # task -> run config
  cfg.tasks = ','.join(pools)            # the tasks (pools) this run trains and fine-tunes, e.g. 'gpt':
                                         # one process per task, then one run with all to summarise
  cfg.decoders = ('logah', 'ghn3')       # GHNs compared with random init (one GHN each per task)
  cfg.ghn_seed = 0                       # seed of every GHN (init, data and group order)
  cfg.seeds = seeds                      # fine-tuning seeds (random init, data order, noise)
  cfg.random_lrs = (1e-3, 3e-4)          # random init's LRs; the best by final eval loss is "the LR"
  cfg.ghn_lr_mults = (1.0, 0.25)         # GHN starts are fine-tuned at the LR times each of these
  # Gaussian noise added to GHN starts, as a fraction of each weight leaf's own init std.
  # GHN-3's tiled chunks repeat channel blocks that deterministic training never separates, so
  # its baseline gets noise; LoGAH's rank-r predictions have no repeated blocks.
  cfg.noise = ml_collections.ConfigDict({'logah': 0.0, 'ghn3': 0.1})
  # Also fine-tune these decoders' predictions with scope 'io' (init '<decoder>-io'): the
  # predicted embeddings, position table, final norm and readout, the blocks at the same seed's
  # random init (hyperinit.logah.scope; why: docs/logah.md, "Where the benefit lives").
  cfg.io_decoders = ('logah',)
  # Also fine-tune these decoders' predictions of each target at 1/clone_factor of its width,
  # HyperCloned clone_factor times to the target (init '<decoder>-clone'): the targets are wider
  # than every pool member and the GHNs do not extrapolate in width, but cloning preserves the
  # function (why: docs/logah.md, "Predict narrower, then HyperClone").
  cfg.clone_decoders = ('logah',)
  cfg.clone_factor = 2
  # The clone's zero-sum symmetry-breaking noise (dB; HyperCloning's default is 10).  It does not
  # change the cloned function at any level; lower = more random full-rank weight around it.
  # Chosen on the validation architecture L5-D96-H4 (not a held-out target), 300 fine-tuning
  # steps, lr 1e-3, 3 seeds, from {10, 0, -5, -10, -20}: mean eval loss 2.568 / 2.546 / 2.536 /
  # 2.527 / 2.544 (random init 2.576); -20 was behind random init at step 100 (docs/logah.md).
  cfg.clone_snr_db = -10.0
  cfg.speedup_step = 100                 # steps random init needs to reach LoGAH's loss at this step
  cfg.plots = True                       # write PNG plots (matplotlib Agg)
  return cfg


VARIANTS = ('vit_local', 'gpt_local', 'smoke', 'smoke_gpt', 'vit', 'gpt', 'experiment',
            'experiment_smoke')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, 'ghn', VARIANTS, 'vit_local').preset
  if arg == 'experiment':
    cfg = _experiment({'gpt': 'gpt_local', 'vit': 'vit_local'}, (0, 1, 2))
    # GPT GHNs meta-train 3x longer than gpt_local: 6000 steps fit the pool better (eval loss
    # 2.68 vs 3.05), and on the validation architecture L5-D96-H4 the prediction stays below
    # random init through fine-tuning step 100 on 3/3 seeds (docs/logah.md, "Third pass").
    cfg.pools.gpt.num_steps = 6000
    return cfg
  if arg == 'experiment_smoke':
    cfg = _experiment({'vit': 'smoke', 'gpt': 'smoke_gpt'}, (0, 1))
    cfg.speedup_step = 5
    return cfg
  return _single(arg)
