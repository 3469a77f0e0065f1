"""Gaussian noise on predicted params, as a fraction of each weight leaf's own init std.

    noisy = add_noise(params, target, 0.5, jax.random.key(0))

Used twice with the same meaning: by meta-training (`MetaConfig.noise`: the GHN
is trained for the noisy start it will be fine-tuned from) and by fine-tuning
(`studies.ghn_finetune.start_params`).  Pure and traceable (inside jit / grad).
"""

from __future__ import annotations

from typing import Any

import jax

from hyperinit import models, spec as spec_lib
from hyperinit.logah.graph import is_scanned, slice_spec
from hyperinit.models.config import ModelConfig


def add_noise(params: Any, target: ModelConfig, frac: float, rng: jax.Array) -> Any:
  """params + N(0, (frac * init std)^2) on every weight leaf (kernels, tables, class token).

  Gains and biases are left as they are.  The std is the leaf's own
  (`models.init_std`: GPT-2's 0.02 / sqrt(2L) on residual outputs), per layer
  for a scanned leaf.  frac = 0 returns `params` itself.
  """
  if frac == 0:
    return params
  specs = spec_lib.flatten(models.param_specs(target), is_leaf=spec_lib.is_spec)
  flat = spec_lib.flatten(params)
  out = {}
  for i, (path, x) in enumerate(sorted(flat.items())):
    s = specs[path]
    if not (s.fan_in or s.role == 'cls_token'):
      out[path] = x
      continue
    scanned = is_scanned(s)
    std = frac * models.init_std(target, path, slice_spec(s) if scanned else s,
                                 x.shape[1:] if scanned else x.shape)
    out[path] = x + std * jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
  return spec_lib.unflatten(out)
