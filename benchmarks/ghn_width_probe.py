"""How a trained GHN's predictions extrapolate in depth and width: their eval loss before training.

    PYTHONPATH=. python benchmarks/ghn_width_probe.py --ghn_dir=WORKDIR/vit/logah_s0/ghn --task=vit \
        [--targets=L4-D96-H4-P2,L6-D96-H4-P2,L6-D96-H4-P2-M512,L6-D128-H4-P2-M384,L6-D128-H4-P2]

Predicts every target with the GHN and prints its mean eval loss (and accuracy
for ViTs) on the task's eval batches (configs/ghn.py:<task>_local), with no
fine-tuning.  The CPU pools are 2-4 layers deep and 64-96 wide (MLP up to 384),
so the default targets separate extrapolating in depth (L6 at width 96), in
MLP width (M512) and in the residual width (D128).
"""

from __future__ import annotations

from absl import app, flags
import numpy as np

from configs import ghn as ghn_configs
from hyperinit.logah import ghn as ghn_lib, meta, saving, tasks

_GHN_DIR = flags.DEFINE_string('ghn_dir', None, "a saved GHN (train_ghn's <workdir>/ghn)",
                               required=True)
_TASK = flags.DEFINE_enum('task', 'vit', ['gpt', 'vit'], 'which CPU config (data)')
_TARGETS = flags.DEFINE_list('targets', None, "targets 'L<depth>-D<width>-H<heads>[-P<patch>]"
                             "[-M<mlp>]' (default: the grid in the module doc)")


def main(argv):
  del argv
  cfg = ghn_configs.get_config(f'{_TASK.value}_local')
  p = '-P2' if _TASK.value == 'vit' else ''
  names = _TARGETS.value or [f'L4-D96-H4{p}', f'L6-D96-H4{p}', f'L6-D96-H4{p}-M512',
                             f'L6-D128-H4{p}-M384', f'L6-D128-H4{p}']
  cfg.finetune.targets = ','.join(names)
  targets = tasks.targets(cfg)
  gcfg, gparams = saving.load_ghn(_GHN_DIR.value)
  batches = [tasks.meta_batch(b) for b in tasks.eval_batches(cfg)]
  print(f'GHN {_GHN_DIR.value} ({gcfg.decoder}, K {gcfg.max_dim}), {len(batches)} eval batches')
  for name in names:
    params = ghn_lib.predict(gcfg, gparams, targets[name])
    out = [meta.task_loss(targets[name], params, b) for b in batches]
    loss = np.mean([float(o[0]) for o in out])
    acc = np.mean([float(o[1]) for o in out])
    print(f'{name:<22} loss {loss:.3f}' + (f'  accuracy {100 * acc:.1f}%' if _TASK.value == 'vit'
                                          else ''), flush=True)


if __name__ == '__main__':
  app.run(main)
