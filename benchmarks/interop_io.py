"""save_hf / load_hf wall time at published sizes, and logits against transformers.

    python -m benchmarks.interop_io --presets=pythia-160m,smollm-135m

Params are random (var 1/fan_in, gains 1 + 0.2 N(0, 1)), drawn on the host.
Prints params, shards, save/load seconds and max|ours - HF| / max|HF| on 1x32 tokens
(HF: transformers from_pretrained, fp32, eager attention; skipped without torch).
"""

from __future__ import annotations

import math
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from hyperinit import interop, models, spec

_PRESETS = flags.DEFINE_list('presets', ['pythia-160m', 'smollm-135m'], 'model presets to time')
_SHARD = flags.DEFINE_string('max_shard_size', '200MB', 'save_hf max_shard_size')


def random_params(cfg, seed: int = 0):
  rng = np.random.default_rng(seed)
  def one(s, shape):
    x = rng.standard_normal(shape.shape, dtype=np.float32)
    if s.fan_in:
      return x / math.sqrt(math.prod(shape.shape[i] for i in s.fan_in))
    return 1 + 0.2 * x
  return jax.tree.map(one, models.param_specs(cfg), models.param_shapes(cfg), is_leaf=spec.is_spec)


def hf_error(path: str, cfg, params) -> float | None:
  try:
    import torch
    import transformers
  except ImportError:
    return None
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (1, 32))
  ours = np.asarray(models.apply_fn(cfg)(params, tokens))
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation='eager').eval()
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(tokens)).logits.numpy()
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def main(argv):
  del argv
  for name in _PRESETS.value:
    cfg = models.get_config(name)
    params = random_params(cfg)
    with tempfile.TemporaryDirectory() as tmp:
      out = f'{tmp}/{name}'
      t = time.perf_counter()
      files = interop.save_hf(out, cfg, params, max_shard_size=_SHARD.value)
      t_save = time.perf_counter() - t
      t = time.perf_counter()
      back, cfg2 = interop.load_hf(out)
      t_load = time.perf_counter() - t
      err = hf_error(out, cfg2, back)
    shards = sum(f.endswith('.safetensors') for f in files)
    print(f'{name}: {models.count_params(cfg) / 1e6:.1f}M params, {shards} shard(s), '
          f'save_hf {t_save:.1f} s, load_hf {t_load:.1f} s, '
          f'max|ours-HF|/max|HF| = {"n/a (no torch)" if err is None else f"{err:.1e}"}')


if __name__ == '__main__':
  app.run(main)
