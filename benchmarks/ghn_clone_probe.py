"""A target wider than the GHN's pool: predict it at 1/n of its width, then HyperClone it n times.

    PYTHONPATH=. python benchmarks/ghn_clone_probe.py --ghn_dir=WORKDIR/gpt/logah_s0/ghn \
        [--task=gpt] [--targets=L6-D128-H4,L5-D112-H4] [--factor=2] [--steps=300] \
        [--seeds=0,1,2] [--starts=random,predicted,cloned] [--lr=1e-3] [--snr_db=10] [--out=rows.json]

LoGAH's predictions do not extrapolate in residual width (docs/logah.md, "Width
extrapolation"), but they do in depth.  HyperCloning widens a network without
changing its function.  So for each target (e.g. 6 x 128, wider and deeper than
every pool member) this predicts the *source* = the target with its embedding,
MLP and head widths divided by --factor (6 x 64, heads kept, head_dim halved),
clones it --factor times along embed / mlp / head_dim
(`studies.ghn_finetune.cloned_prediction`, the experiment's 'logah-clone' start:
`cloning.clone_model`, noisy symmetric, rng = the seed; it checks that the
clone's config is the target's).  It then fine-tunes the target with the experiment's trainer
config (configs/ghn.py:<task>_local) from each start, on the same batches per
seed, and prints the eval loss (and accuracy for ViTs) at steps 0, 25, 100 and
--steps (and, with --out, writes them as JSON rows {target, seed, start, lr, steps,
loss[, accuracy]}):
  random     the target's random init (seed)
  predicted  the GHN's direct prediction of the target
  cloned     the GHN's prediction of the source, cloned to the target
"""

from __future__ import annotations

import json

from absl import app, flags
import jax

from benchmarks import _ghn_probe
from hyperinit import _io, models
from hyperinit.logah import ghn as ghn_lib, saving, tasks
from hyperinit.studies import ghn_finetune

_GHN_DIR = flags.DEFINE_string('ghn_dir', None, "a saved GHN (train_ghn's <workdir>/ghn)",
                               required=True)
_TASK = flags.DEFINE_enum('task', 'gpt', ['gpt', 'vit'], 'which CPU config (data, trainer)')
_TARGETS = flags.DEFINE_list('targets', None, "targets 'L<depth>-D<width>-H<heads>[-P<patch>]' "
                             "(default: the config's held-out targets)")
_FACTOR = flags.DEFINE_integer('factor', 2, 'widening factor n (the source is 1/n as wide)')
_STEPS = flags.DEFINE_integer('steps', 300, 'fine-tuning steps')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'seeds (random init, clone noise, data order)')
_STARTS = flags.DEFINE_list('starts', ['random', 'predicted', 'cloned'], 'the starts to run')
_SNR = flags.DEFINE_float('snr_db', 10.0, "the clone's symmetry-breaking noise (dB; lower: more)")
_LR = flags.DEFINE_float('lr', 1e-3, 'peak fine-tuning learning rate')
_OUT = flags.DEFINE_string('out', None, 'also write the rows here (JSON, atomically)')


def main(argv):
  del argv
  cfg = _ghn_probe.finetune_config(_TASK.value, _STEPS.value, ','.join(_TARGETS.value or ()))
  f = cfg.finetune
  gcfg, gparams = saving.load_ghn(_GHN_DIR.value)
  print(f'GHN {_GHN_DIR.value} ({gcfg.decoder}); factor {_FACTOR.value}; '
        f'{_STEPS.value} steps at lr {_LR.value:g}')
  out = []
  for name, target in tasks.targets(cfg).items():
    ft = ghn_finetune.Finetuner(f, target, lr=_LR.value)
    predicted = ghn_lib.predict(gcfg, gparams, target)
    for seed in (int(s) for s in _SEEDS.value):
      for start in _STARTS.value:
        if start == 'random':
          params = models.init_params(target, jax.random.key(seed))
        elif start == 'predicted':
          params = predicted
        elif start == 'cloned':
          params = ghn_finetune.cloned_prediction(gcfg, gparams, target, _FACTOR.value, seed,
                                                  _SNR.value)
        else:
          raise ValueError(f'unknown start {start!r}; expected random, predicted or cloned')
        rows = ft.run(params, seed)
        out.append({'target': name, 'seed': seed, 'start': start, 'lr': _LR.value,
                    'factor': _FACTOR.value, 'snr_db': _SNR.value,
                    'steps': [int(r['step']) for r in rows],
                    'loss': [float(r['loss']) for r in rows]}
                   | ({'accuracy': [float(r['accuracy']) for r in rows]}
                      if _TASK.value == 'vit' else {}))
        curve = _ghn_probe.format_curve(rows, accuracy=_TASK.value == 'vit')
        print(f'{name}  seed {seed}  {start:<9} {curve}', flush=True)
  if _OUT.value:
    _io.atomic_write(_OUT.value, json.dumps({'ghn_dir': _GHN_DIR.value, 'rows': out}, indent=1))


if __name__ == '__main__':
  app.run(main)
