"""HyperCloning at the paper's horizon: random init trained long enough to pass the source.

    python -m experiments.clone_horizon --workdir=workdir/clone_horizon  (the experiment)
    --config=configs/clone_horizon.py:smoke                                    seconds; the test

Two sources per seed (2 x 32 'small', 2 x 64 'big', both trained `source_steps`), cloned into
destinations trained `target_steps` (long enough that random init ends well below the
sources) beside a random-init model of each destination architecture:

  f2     small -> 2 x 64   (factor 2), every variant
  f4     small -> 2 x 128  (factor 4), every variant
  big_f2 big   -> 2 x 128  (factor 2): "a 2x clone of a bigger source beats a 4x clone of a
                           smaller one" (same widths and size as f4's destination; 8 heads of
                           16 instead of 16 of 8, so its own random-init baseline)
  ws_*   the warm-up study on f2's noisy symmetric clone (seed 0): what tames the loss spike of
         the clone's first steps (shorter / no warm-up, lower peak LR, muP with the source as
         base, widened Adam moments resuming the source's run); shares f2's random baseline.

Each arm is an ordinary configs/clone.py experiment config (one source, one factor) built by
`arm_config`; `target` overrides are 'dotted.key=value' pairs on the trainer config.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from configs import clone
from configs import common


@dataclasses.dataclass(frozen=True)
class Preset:
  seeds: tuple[int, ...]
  source_steps: int
  target_steps: int
  eval_every: int
  widths: tuple[int, int]          # small and big source embed widths (2 layers, 4 heads)
  study_seeds: tuple[int, ...]     # seeds of the warm-up study arms
  variants: tuple[str, ...] = clone.ALL_VARIANTS   # variants of the f2 and f4 arms
  study: tuple[str, ...] = ('ws_warmup1pct', 'ws_no_warmup', 'ws_lr_third', 'ws_mup_source_base',
                            'ws_widen_opt_state')
  seq_len: int = 128
  batch: int = 16
  smoke: bool = False


PRESETS = {
    'experiment': Preset(seeds=(0, 1, 2), source_steps=400, target_steps=800, eval_every=50,
                         widths=(32, 64), study_seeds=(0,)),
    'smoke': Preset(seeds=(0,), source_steps=8, target_steps=8, eval_every=4, widths=(16, 32),
                    study_seeds=(0,), variants=('noisy_symmetric', 'diagonal'),
                    study=('ws_mup_source_base', 'ws_widen_opt_state'), seq_len=32, batch=8,
                    smoke=True),
}


def _arm(source: str, factor: int, variants: tuple[str, ...], baseline: str = '',
         target: str = '', seeds: tuple[int, ...] | None = None,
         mup_source_base: bool = False,
         with_opt_state: bool = False) -> ml_collections.ConfigDict:
  a = ml_collections.ConfigDict()
  a.source = source                # a key of config.sources
  a.factor = factor                # clone factor (embed, mlp, heads)
  a.variants = variants            # clone variants trained
  a.baseline = baseline            # '' : train this arm's random init; else the arm whose it reads
  a.target = target                # 'key=value,...' trainer overrides of the clone runs
  a.seeds = common.P(tuple) if seeds is None else seeds   # None: every seed
  a.mup_source_base = mup_source_base   # train the clone under muP with the source as base
  a.with_opt_state = with_opt_state     # widen the Adam moments and resume the source's run
  return a


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = common.parse_arg(arg, 'clone_horizon', PRESETS, 'experiment').preset
  p = PRESETS[name]
  cfg = ml_collections.ConfigDict()
  cfg.title = f'HyperCloning at the horizon where random init passes the source ({name})'
  cfg.command = ''                 # filled in by the entry point
  cfg.seeds = p.seeds
  cfg.margin = 0.2                 # required: random final <= source final - margin (else noted)
  # the single-arm template (configs/clone.py); arms change source model, factor and variants
  base = clone.get_config('smoke' if p.smoke else 'demo')
  for t, steps in ((base.source, p.source_steps), (base.target, p.target_steps)):
    t.num_train_steps = steps
    t.optimizer.warmup_steps = max(1, steps // 10)
    t.eval_every = p.eval_every
    t.log_every = min(100, steps)
    t.checkpoint.every = steps
    t.data.seq_len = p.seq_len
    t.batch_size = p.batch
  base.dropout.variants = ()
  base.dropout.seeds = ()
  base.ablation_seeds = common.P(tuple)
  cfg.base = base
  small, big = p.widths
  cfg.sources = ml_collections.ConfigDict({
      'small': dict(embed_dim=small, num_heads=4, mlp_dim=4 * small),
      'big': dict(embed_dim=big, num_heads=4, mlp_dim=4 * big)})
  t = p.target_steps
  ns = ('noisy_symmetric',)
  study = {
      'ws_warmup1pct': _arm('small', 2, ns, 'f2', f'optimizer.warmup_steps={max(1, t // 100)}',
                            p.study_seeds),
      'ws_no_warmup': _arm('small', 2, ns, 'f2', 'optimizer.warmup_steps=0', p.study_seeds),
      'ws_lr_third': _arm('small', 2, ns, 'f2', 'optimizer.learning_rate=0.001', p.study_seeds),
      'ws_mup_source_base': _arm('small', 2, ns, 'f2', '', p.study_seeds, mup_source_base=True),
      'ws_widen_opt_state': _arm('small', 2, ns, 'f2', '', p.study_seeds, with_opt_state=True),
  }
  cfg.arms = ml_collections.ConfigDict({
      'f2': _arm('small', 2, p.variants),
      'f4': _arm('small', 4, p.variants[:1] if p.smoke else p.variants),
      # its own random init: 2 x 128 with 8 heads of 16 (the 4x clone of 2 x 32 has 16 of 8)
      'big_f2': _arm('big', 2, ns),
      **{k: study[k] for k in p.study}})
  return cfg
