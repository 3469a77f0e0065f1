"""Optimizer update time: muP AdamW vs plain optax AdamW on GPT-2-small-sized params (124M).

Both updates are jitted (params and state donated), run in the same process on the
same random params and gradients, interleaved rep by rep (alternating which goes
first) so that load from other processes hits both alike.  Prints the median,
mean and min time per update and the muP / optax ratios.

    python -m benchmarks.mup_optimizer_benchmark --reps=30
"""

import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from hyperinit import models, mup, spec

_PRESET = flags.DEFINE_string('preset', 'gpt2', 'target model preset (gpt2 = 124M params)')
_BASE_EMBED = flags.DEFINE_integer('base_embed', 256, 'embed_dim of the muP base (head_dim kept)')
_REPS = flags.DEFINE_integer('reps', 30, 'timed updates per optimizer')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'untimed updates per optimizer (after compiling)')
_LR = flags.DEFINE_float('lr', 3e-4, 'learning rate')
_WD = flags.DEFINE_float('weight_decay', 0.1, 'AdamW weight decay')


def _random_like(shapes, seed):
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))

  @jax.jit
  def make(keys):
    return [0.02 * jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, make(keys))


def main(argv):
  del argv
  cfg = models.get_config(_PRESET.value)
  heads = max(1, _BASE_EMBED.value // cfg.d_head)
  base = cfg.replace(embed_dim=_BASE_EMBED.value, num_heads=heads,
                     mlp_dim=cfg.mlp_dim * _BASE_EMBED.value // cfg.embed_dim)
  mults = mup.config_multipliers(cfg, base)
  shapes = models.param_shapes(cfg)
  print(f'{_PRESET.value}: {spec.count(shapes) / 1e6:.1f}M params in {len(mults)} leaves; '
        f'base embed {_BASE_EMBED.value}; width multipliers {mults.axis_mults}; '
        f'classes {mup.class_counts(mults)}; device {jax.devices()[0].device_kind}')
  grads = _random_like(shapes, 1)
  txs = {
      'optax.adamw': optax.adamw(_LR.value, weight_decay=_WD.value),
      'mup.adamw': mup.adamw(_LR.value, weight_decay=_WD.value, mults=mults),
      'mup.adamw(eps_mode=none)': mup.adamw(_LR.value, weight_decay=_WD.value, mults=mults,
                                            eps_mode='none'),
  }
  runs = {}
  for name, tx in txs.items():
    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s
    params = _random_like(shapes, 0)
    state = tx.init(params)
    fn = jax.jit(step, donate_argnums=(0, 1))
    # Noise-free evidence next to the timings: XLA's own cost model of the compiled update.
    cost = fn.lower(params, state, grads).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    print(f'{name}: XLA cost model: {cost.get("flops", float("nan")) / 1e6:.1f} MFLOP, '
          f'{cost.get("bytes accessed", float("nan")) / 1e9:.3f} GB accessed')
    t0 = time.perf_counter()
    params, state = fn(params, state, grads)
    jax.block_until_ready(params)
    print(f'{name}: compile + first update {time.perf_counter() - t0:.2f} s')
    for _ in range(_WARMUP.value):
      params, state = fn(params, state, grads)
    jax.block_until_ready(params)
    runs[name] = [fn, params, state, []]
  names = list(runs)
  for r in range(_REPS.value):
    order = names if r % 2 == 0 else names[::-1]
    for name in order:
      run = runs[name]
      t0 = time.perf_counter()
      run[1], run[2] = run[0](run[1], run[2], grads)
      jax.block_until_ready(run[1])
      run[3].append(time.perf_counter() - t0)
  ref = runs['optax.adamw'][3]
  print(f'\n{"optimizer":<26} {"median ms":>10} {"mean ms":>9} {"min ms":>8} '
        f'{"med ratio":>10} {"min ratio":>10}')
  for name in names:
    t = runs[name][3]
    print(f'{name:<26} {1e3 * statistics.median(t):10.1f} {1e3 * statistics.mean(t):9.1f} '
          f'{1e3 * min(t):8.1f} {statistics.median(t) / statistics.median(ref):10.3f} '
          f'{min(t) / min(ref):10.3f}')
  # Paired per-rep ratios: robust to load that drifts over the run.
  paired = [a / b for a, b in zip(runs['mup.adamw'][3], ref)]
  print(f'median of paired per-rep ratios mup.adamw / optax.adamw: {statistics.median(paired):.3f}'
        f' (reps={_REPS.value})')
  # Correctness guard: the two trajectories differ only by muP's factors, never NaN.
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(runs['mup.adamw'][1]))


if __name__ == '__main__':
  app.run(main)
