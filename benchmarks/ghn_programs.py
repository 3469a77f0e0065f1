"""Compiled programs of GHN meta-training in one process: time, peak RSS, memory mappings.

    python -m benchmarks.ghn_programs [--runs=3] [--steps=40]

Meta-trains the smoke GHN `--runs` times in one process (decoders alternating logah / ghn3,
seeds 0, 1, ...: every run compiles its own per-group programs, as ghn_experiment does) and
prints per run: wall seconds, the final meta-loss, the process's peak RSS and its number of
memory mappings after the run (LLVM code of live executables lives in mappings; the kernel's
vm.max_map_count, 65530 by default, is the limit that 'Cannot allocate memory' hit).
"""

import gc
import resource
import tempfile
import time

from absl import app, flags

from configs import ghn as ghn_configs
from hyperinit.train import ghn as train

_RUNS = flags.DEFINE_integer('runs', 3, 'meta-training runs in this process')
_STEPS = flags.DEFINE_integer('steps', 40, 'meta-steps per run')
_RELEASE = flags.DEFINE_bool('release', True, 'call train.release_programs() between runs '
                             '(where it exists: the code before issue 30.7)')


def _maps() -> int:
  with open('/proc/self/maps') as f:
    return sum(1 for _ in f)


def main(argv):
  del argv
  print(f'start: maps {_maps()}, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB')
  for i in range(_RUNS.value):
    cfg = ghn_configs.get_config('smoke')
    cfg.num_steps, cfg.seed = _STEPS.value, i
    cfg.ghn.decoder = ('logah', 'ghn3')[i % 2]
    cfg.checkpoint.async_save = False
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
      out = train.train_ghn(cfg, d)
    wall = time.perf_counter() - t
    if _RELEASE.value and hasattr(train, 'release_programs'):
      train.release_programs()
    del out['state'], out['params']
    gc.collect()
    print(f'run {i} ({cfg.ghn.decoder}): {wall:.1f} s, loss {out["train"].get("loss", float("nan")):.5f}, '
          f'pool_loss {out["eval"]["pool_loss"]:.5f}, maps {_maps()}, '
          f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB', flush=True)


if __name__ == '__main__':
  app.run(main)
