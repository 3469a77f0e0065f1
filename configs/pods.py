"""Pod configs: the models of docs/pods.md and the paper's three clone experiments.

    --config=configs/pods.py:llama2-7b        bf16 compute, fp32 params, scan, remat=full, FSDP
    --config=configs/pods.py:clone-pythia     train Pythia-1.4B; config.clone: its 410M source
    python -m experiments.compile --config=configs/pods.py:olmo-1b --topology=v5e:4x4 --plan
    python -m experiments.compile --config=configs/pods.py:clone-olmo --topology=v5e:4x4 --job=clone

Each is an ordinary trainer config (configs/lm.py fields, dataset lm1b: prepare it, or pass
--config.data.dataset=synthetic for a smoke run), sharded FSDP over every chip.  `batch` is
the GLOBAL batch: docs/pods.md lists, per slice, the per-device batch and grad_accum that
fit (batch = per-device batch x chips).  The clone presets follow HyperCloning (Samragh et
al. 2024): OPT-350M -> 1.3B, Pythia-410M -> 1.4B, OLMo-1B -> 2.9B, AdamW (wd 0.05, betas
0.9 / 0.999).  Our OPT family is pre-LN without OPT-350M's projected embedding, so its
source is OPT-1.3B's family at OPT-350M's sizes (24 x 1024, 16 heads, MLP 4096).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from configs import common
from configs import lm


@dataclasses.dataclass(frozen=True)
class Preset:
  model: str                      # model preset (the trained model; a clone's destination)
  seq_len: int
  lr: float
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)   # config.model fields
  clone_source: dict[str, Any] | None = None   # preset name + size overrides of the source
  clone_factors: dict[str, int] | None = None  # {axis: n} (cloning.resolve_factors)
  clone_tie: str = 'keep'


PAPER_OPT = dict(weight_decay=0.05, b2=0.999)   # HyperCloning's AdamW settings

PRESETS = {
    'gpt2': Preset('gpt2', 1024, 6e-4),
    'gpt2-medium': Preset('gpt2-medium', 1024, 3e-4),
    'gpt2-large': Preset('gpt2-large', 1024, 2.5e-4),
    'opt-1.3b': Preset('opt-1.3b', 2048, 2e-4),
    'pythia-1.4b': Preset('pythia-1.4b', 2048, 2e-4),
    'olmo-1b': Preset('olmo-1b', 2048, 4e-4),
    'llama2-7b': Preset('llama2-7b', 4096, 3e-4),
    # the paper's clones: the target model trained from the clone of `clone_source`
    'clone-opt': Preset('opt-1.3b', 2048, 2e-4,
                        clone_source=dict(name='opt-1.3b', embed_dim=1024, num_heads=16,
                                          mlp_dim=4096),
                        clone_factors=dict(embed=2, mlp=2, heads=2)),
    'clone-pythia': Preset('pythia-1.4b', 2048, 2e-4, clone_source=dict(name='pythia-410m'),
                           clone_factors=dict(embed=2, mlp=2, head_dim=2)),
    # OLMo-1B widened 2x in embed and heads (MLP kept): 16 x 4096, 32 heads, MLP 8192, untied
    # (a tied embedding with OLMo's non-parametric final norm cannot stay tied): 3.10B params
    # (2.9B had it stayed tied: the paper's OLMo-1B -> 2.9B).
    'clone-olmo': Preset('olmo-1b', 2048, 4e-4,
                         overrides=dict(embed_dim=4096, num_heads=32, tie_embeddings=False),
                         clone_source=dict(name='olmo-1b'), clone_factors=dict(embed=2, heads=2),
                         clone_tie='untie'),
}

CLONE_PRESETS = tuple(n for n, p in PRESETS.items() if p.clone_source)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, 'pods', PRESETS, 'gpt2', **common.RUN_OPTIONS)
  p = PRESETS[args.preset]
  cfg = lm.get_config('gpt2')
  cfg.model.name = p.model
  cfg.model.update(p.overrides)
  cfg.model.dtype = 'bfloat16'     # bf16 compute, fp32 params and Adam moments
  cfg.model.scan_layers = True     # one compiled block (fast compiles of deep models)
  cfg.model.remat = 'full'
  cfg.data.seq_len = p.seq_len
  cfg.batch_size = 256
  cfg.grad_accum_steps, cfg.eval_batch_size = 1, None   # the plan search picks microbatches
  cfg.optimizer.learning_rate = p.lr
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
  if p.clone_source:
    cfg.optimizer.weight_decay = PAPER_OPT['weight_decay']
    cfg.optimizer.b2 = PAPER_OPT['b2']
    c = cfg.clone = ml_collections.ConfigDict()
    c.source = ml_collections.ConfigDict(dict(
        {k: None for k in ('embed_dim', 'num_heads', 'mlp_dim', 'num_layers')},
        **p.clone_source))
    for axis in ('embed', 'mlp', 'heads', 'head_dim', 'kv_heads'):
      c[axis] = (p.clone_factors or {}).get(axis, 0)   # 0: not widened
    c.variant = 'noisy_symmetric'
    c.snr_db = 10.0
    c.tie = p.clone_tie
  if args.local:
    cfg.data.dataset = 'synthetic'
    cfg.batch_size, cfg.num_train_steps = 4, 20
  common.apply_run_options(cfg, args, cfg.optimizer.warmup_steps)
  return cfg


# docs/pods.md's rows, in the order the driver (experiments/pod_plans.py) compiles them:
# (job, preset, topology).  v5p rows are added by the driver for a model no v5e slice fits.
TRAIN_MODELS = ('gpt2', 'gpt2-medium', 'gpt2-large', 'opt-1.3b', 'pythia-1.4b', 'olmo-1b',
                'llama2-7b')
V5E_SLICES = ('v5e:4x4', 'v5e:8x8', 'v5e:16x16')
V5P_FALLBACK = 'v5p:2x2x4'
ROWS = tuple([('train', m, 'v5e:4x4') for m in TRAIN_MODELS]
             + [('clone', c, 'v5e:4x4') for c in CLONE_PRESETS]
             + [('train', m, s) for s in V5E_SLICES[1:] for m in TRAIN_MODELS])
