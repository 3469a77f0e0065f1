"""GHN parameter counts, LoGAH vs GHN-3, for covering GPT-2 S/M/L and ViT-S/B/L.

    python -m benchmarks.ghn_param_counts

Counts come from `jax.eval_shape` of the GHN's init (nothing is allocated, so
even a 13-billion-parameter GHN-3 decoder can be counted).  "Covering" a target
means predicting its widest weight dimension without repeating values: LoGAH
needs K >= the widest dimension, GHN-3 a chunk as wide as it.
"""

from __future__ import annotations

from absl import app
import jax
import numpy as np

from hyperinit import models, spec
from hyperinit.logah import ghn as ghn_lib

TARGETS = ('gpt2', 'gpt2-medium', 'gpt2-large', 'vit-s', 'vit-b', 'vit-l')


def widest(target, include_vocab: bool) -> int:
  """Widest fan-in or fan-out size over the target's matrices."""
  specs = spec.flatten(models.param_specs(target), is_leaf=spec.is_spec)
  shapes = spec.flatten(models.param_shapes(target))
  out = 0
  for path, s in specs.items():
    if not s.fan_in:
      continue
    for dims in (s.fan_in, s.fan_out):
      if include_vocab or all(s.axes[i] != 'vocab' for i in dims):
        out = max(out, s.size_of(shapes[path].shape, dims))
  return out


def count(**kw) -> int:
  return ghn_lib.count_params(ghn_lib.GHNConfig(**kw))


def breakdown(cfg: ghn_lib.GHNConfig) -> str:
  shapes = ghn_lib.param_shapes(cfg)
  parts = {}
  for path, x in spec.flatten(shapes).items():
    top = '/'.join(path.split('/')[:2])
    parts[top] = parts.get(top, 0) + int(np.prod(x.shape))
  return ', '.join(f'{k} {v:,}' for k, v in sorted(parts.items()))


def pow2(n: int) -> int:
  return int(2 ** np.ceil(np.log2(n)))


def main(argv):
  del argv
  ref = ghn_lib.GHNConfig()
  print(f'LoGAH hidden 64, r 32, K 32768: {count():,}  [{breakdown(ref)}]')
  print(f'GHN-3 hidden 64, chunk 64:      {count(decoder="ghn3"):,}  '
        f'[{breakdown(ref.replace(decoder="ghn3"))}]')
  c2048 = ghn_lib.param_shapes(ref.replace(decoder='ghn3', chunk=2048))['decoder']['mlp']['fc2']
  print(f'GHN-3 chunk 2048, last layer: {spec.count(c2048):,}')
  print()
  print('| target | params | widest dim (vocab) | LoGAH K=32768 | LoGAH K covering all | '
        'GHN-3 chunk 64 (tiled) | GHN-3 covering (chunk = widest) |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for name in TARGETS:
    target = models.get_config(name)
    w, wv = widest(target, False), widest(target, True)
    k = pow2(wv)
    wrap = '' if wv <= 32768 else ' (vocab wraps)'
    print(f'| {name} | {models.count_params(target) / 1e6:.0f}M | {w}'
          f'{f" ({wv})" if wv != w else ""} | {count() / 1e6:.2f}M{wrap} | '
          f'{count(max_dim=k) / 1e6:.2f}M (K={k}) | {count(decoder="ghn3") / 1e6:.2f}M | '
          f'{count(decoder="ghn3", chunk=w) / 1e9:.2f}B (chunk {w}) |')


if __name__ == '__main__':
  jax.config.update('jax_platforms', 'cpu')
  app.run(main)
