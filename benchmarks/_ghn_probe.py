"""What the GHN fine-tuning probes share (ghn_clone_probe.py, ghn_init_ablation.py).

    cfg = finetune_config('gpt', steps=300, targets='L5-D96-H4')   # configs/ghn.py:gpt_local
    rows = Finetuner(cfg.finetune, target, lr=1e-3).run(params, seed)
    print(format_curve(rows, accuracy=False))   # 'step 0: 5.561  step 25: 3.517 ...'
"""

from __future__ import annotations

from typing import Any

from configs import ghn as ghn_configs


def finetune_config(task: str, steps: int, targets: str | None = None) -> Any:
  """configs/ghn.py:<task>_local with `steps` fine-tuning steps, evaluated at steps 0, 25, 100
  and `steps` only (no eval_every); `targets` (comma-separated) replaces the held-out ones."""
  cfg = ghn_configs.get_config(f'{task}_local')
  f = cfg.finetune
  if targets:
    f.targets = targets
  f.num_train_steps, f.eval_every = steps, 0
  f.eval_at = tuple(sorted({0, min(25, steps), min(100, steps), steps}))
  return cfg


def format_curve(rows: list[dict[str, float]], accuracy: bool) -> str:
  """Eval rows of `Finetuner.run` -> one line: the loss per step and, with `accuracy` (ViTs:
  the LM eval's token accuracy is not shown), the accuracy in brackets."""
  return '  '.join(f"step {r['step']}: {r['loss']:.3f}"
                   + (f" ({100 * r['accuracy']:.1f}%)" if accuracy and 'accuracy' in r else '')
                   for r in rows)
