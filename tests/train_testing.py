"""Shared trainer configs for the tests (imported as `import train_testing`)."""

from configs import lm as lm_configs


def tiny_lm_config(steps, **overrides):
  """configs/lm.py:tiny on the synthetic stream (no files), 32-token rows, 2 warm-up steps.

  `overrides` set fields by dotted path, e.g. **{'optimizer.learning_rate': 1e-2}.
  """
  cfg = lm_configs.get_config('tiny')
  cfg.data.dataset = 'synthetic'
  cfg.data.seq_len = 32
  cfg.num_train_steps = steps
  cfg.optimizer.warmup_steps = 2
  for key, v in overrides.items():
    *parents, leaf = key.split('.')
    node = cfg
    for part in parents:
      node = node[part]
    node[leaf] = v
  return cfg
