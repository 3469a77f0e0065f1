"""The clone's noise generator: the counter-based hash (cloning/noise.py) vs jax.random.

    python benchmarks/clone_noise_benchmark.py                 # GPT-2-medium-size clone, CPU
    python benchmarks/clone_noise_benchmark.py --model=gpt2 --repeats=3

The clone is the one a GPT-2-medium-size destination needs: `--model` at half
width (embed, heads, mlp) cloned 2x.  Three compiled clones (`cloning.clone_fn`,
output ready): noisy_symmetric with the hash (what the library runs), the same
clone with `jax.random.normal` (threefry2x32, jax's default) substituted for the
hash, and the symmetric clone (no noise); the noise's own cost is a noisy clone
minus the symmetric one.  The noise is timed inside the clone on purpose: there
XLA fuses the generator into the output loop; a noise-only program that sums
the draws instead is dominated by the (single-threaded) reduction.

Best of --repeats calls per program; rounds interleave the programs, so a
shared machine's load hits them alike.  Prints a table (seconds).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp

from hyperinit import cloning, models
from hyperinit.cloning import noise as noise_lib
from hyperinit.cloning import widen


def _source_config(name: str):
  cfg = models.get_config(name)
  return models.get_config(name, embed_dim=cfg.embed_dim // 2, num_heads=cfg.num_heads // 2,
                           mlp_dim=cfg.mlp_dim // 2)


def _draw_shapes(plan) -> list[tuple[int, ...]]:
  """The shape of every unit-variance draw the noisy clone makes (`noise.zero_sum_noise`)."""
  out = []
  for lp in plan.leaves:
    if not widen.needs_noise(lp, plan.variant):
      continue
    j = lp.widened_in[0]
    zshape = []
    for i, (fi, si) in enumerate(zip(lp.factors, lp.in_shape)):
      zshape += ([1 if i == j else fi, si] if fi > 1 else [si])
    out += [tuple(zshape)] * widen.noise_draws(lp)
  return out


def _threefry(seed, shape, dist='irwin_hall', dtype=jnp.float32):
  del dist
  return jax.random.normal(jax.random.wrap_key_data(seed, impl='threefry2x32'), shape, dtype)


def _best(fn, args, repeats):
  jax.block_until_ready(fn(*args))     # compile + warm
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--model', default='gpt2-medium', help='destination size (cloned from half)')
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--rounds', type=int, default=2)
  args = ap.parse_args(argv)

  src_cfg = _source_config(args.model)
  params = models.init_params(src_cfg, jax.random.key(0))
  specs = models.param_specs(src_cfg)
  plans = {v: cloning.make_plan(specs, params, cloning.factors_for(2), v)
           for v in ('noisy_symmetric', 'symmetric')}
  shapes = _draw_shapes(plans['noisy_symmetric'])
  n_noise = sum(math.prod(s) for s in shapes)
  dst = sum(math.prod(lp.dst_shape) for lp in plans['symmetric'].leaves)
  print(f'{args.model}-size clone: source {models.count_params(src_cfg) / 1e6:.1f}M -> '
        f'destination {dst / 1e6:.1f}M params; noise: {len(shapes)} draws, '
        f'{n_noise / 1e6:.1f}M samples; {jax.device_count()} {jax.default_backend()} device(s)')

  key = jax.random.key(1)

  def compiled(plan):
    return cloning.clone_fn(plan).lower(params, key).compile()

  # The same clone with jax.random's threefry draws: traced with the substitute, and
  # with the jit caches cleared around it (the per-leaf builder is a nested jit).
  hash_noise = noise_lib.hash_noise
  noise_lib.hash_noise = _threefry
  jax.clear_caches()
  try:
    threefry_clone = compiled(plans['noisy_symmetric'])
  finally:
    noise_lib.hash_noise = hash_noise
    jax.clear_caches()
  clone_fns = {'clone noisy_symmetric, hash': compiled(plans['noisy_symmetric']),
               'clone noisy_symmetric, threefry': threefry_clone,
               'clone symmetric (no noise)': compiled(plans['symmetric'])}
  a, b = (jax.tree.leaves(clone_fns[k](params, key)) for k in list(clone_fns)[:2])
  if all(bool(jnp.array_equal(x, y)) for x, y in zip(a, b)):
    raise SystemExit('the threefry substitute did not take effect')
  del a, b

  best: dict[str, float] = {}
  for _ in range(args.rounds):
    for k, fn in clone_fns.items():
      best[k] = min(best.get(k, math.inf), _best(fn, (params, key), args.repeats))
  sym = best['clone symmetric (no noise)']
  print('| clone | best s | noise s (clone - symmetric) | noise ns / sample |')
  print('|---|---|---|---|')
  for k, t in best.items():
    noise = t - sym
    per = f'{noise / n_noise * 1e9:.1f}' if k != 'clone symmetric (no noise)' else '-'
    print(f'| {k} | {t:.3f} | {noise:.3f} | {per} |')
  h, f = best['clone noisy_symmetric, hash'], best['clone noisy_symmetric, threefry']
  print(f'threefry / hash: whole clone {f / h:.2f}x, noise {(f - sym) / (h - sym):.2f}x')

if __name__ == '__main__':
  main()
