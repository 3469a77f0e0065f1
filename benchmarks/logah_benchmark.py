"""Time and peak memory of LoGAH prediction on this machine, and the encoder's cost per graph.

    python -m benchmarks.logah_benchmark                    # GPT-2 Large
    python -m benchmarks.logah_benchmark --target=gpt2 --decoder=ghn3

Peak memory is the process's resident-set high-water mark (VmHWM), reset just
before the prediction through /proc/self/clear_refs, so it counts everything
alive during `predict`: the GHN, JAX's runtime, and the predicted tree.
"""

from __future__ import annotations

import resource
import time

from absl import app, flags
import jax
import numpy as np

from hyperinit import models, spec
from hyperinit.logah import batching, ghn as ghn_lib, graph as graph_lib, samplers

_TARGET = flags.DEFINE_string('target', 'gpt2-large', 'model preset to predict')
_DECODER = flags.DEFINE_enum('decoder', 'logah', ['logah', 'ghn3'], 'GHN decoder')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'warm predictions to time after the first')


def _rss_mib(field: str) -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) / 1024
  return float('nan')


def _reset_peak() -> bool:
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _block(tree):
  jax.tree.map(lambda x: x.block_until_ready(), tree)
  return tree


def main(argv):
  del argv
  target = models.get_config(_TARGET.value)
  cfg = ghn_lib.GHNConfig(decoder=_DECODER.value)
  target_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                     for x in jax.tree.leaves(models.param_shapes(target)))
  print(f'target {_TARGET.value}: {models.count_params(target):,} params, '
        f'{target_bytes / 2**20:.0f} MiB')

  graph_lib.build_graph.cache_clear()
  t = time.perf_counter()
  g = graph_lib.build_graph(target)
  print(f'graph: {g.num_nodes} nodes, {g.num_edges} edges, built in '
        f'{1e3 * (time.perf_counter() - t):.1f} ms (incl. all-pairs shortest paths)')

  params = ghn_lib.init(cfg, jax.random.key(0))
  print(f'GHN ({cfg.decoder}): {spec.count(params):,} params')

  # Warm up the per-leaf compile cache on a tiny model so the cold number below is
  # mostly the big target's own compiles.
  _block(ghn_lib.predict(cfg, params, models.get_config('gpt2-tiny')))
  base = _rss_mib('VmRSS')
  exact = _reset_peak()
  t = time.perf_counter()
  out = _block(ghn_lib.predict(cfg, params, target))
  cold = time.perf_counter() - t
  peak = _rss_mib('VmHWM') if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  out_bytes = sum(x.nbytes for x in jax.tree.leaves(out))
  print(f'predict (cold, incl. compiles): {cold:.2f} s')
  print(f'RSS before {base:.0f} MiB, peak during predict {peak:.0f} MiB '
        f'({"VmHWM reset" if exact else "ru_maxrss, whole process"}); '
        f'increase {peak - base:.0f} MiB = {(peak - base) * 2**20 / target_bytes:.2f} x target bytes; '
        f'peak / target bytes = {peak * 2**20 / target_bytes:.2f}')
  assert out_bytes == target_bytes
  del out
  times = []
  for _ in range(_REPEATS.value):
    t = time.perf_counter()
    out = _block(ghn_lib.predict(cfg, params, target))
    times.append(time.perf_counter() - t)
    del out
  if times:
    print(f'predict (warm): {min(times):.2f} s best of {len(times)}')

  # Encoder cost per graph: the target alone, and a meta-batch of sampled GPTs.
  def time_encode(graphs, reps=5):
    batch = batching.batch_graphs(graphs)
    ghn_lib.encode(cfg, params, batch).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
      ghn_lib.encode(cfg, params, batch).block_until_ready()
    return (time.perf_counter() - t) / reps, batching.bucket_for(graphs)

  dt, b = time_encode([g])
  print(f'encoder, 1 graph of {g.num_nodes} nodes (bucket {b.max_nodes}): {1e3 * dt:.1f} ms')
  for pool in ('gpts1k', 'vits1k'):
    graphs = [graph_lib.build_graph(c) for c in samplers.sample_configs(pool, 8, seed=0)]
    dt, b = time_encode(graphs)
    print(f'encoder, 8 {pool} graphs of {min(x.num_nodes for x in graphs)}-'
          f'{max(x.num_nodes for x in graphs)} nodes (bucket {b.max_nodes}): '
          f'{1e3 * dt / len(graphs):.1f} ms per graph')


if __name__ == '__main__':
  app.run(main)
