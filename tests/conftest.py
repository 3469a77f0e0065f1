"""Test-wide settings, set before jax is imported (they reach the subprocesses tests start too).

- 8 forced host CPU devices (`XLA_FLAGS`): the multi-device tests shard over them. A test module
  needs its own `os.environ.setdefault('XLA_FLAGS', ...)` only when it must also run alone as a
  script (`python tests/x_test.py`); under pytest this file sets it first.
- jax's persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`, default a directory in the
  system temp dir; subprocess mains inherit it): a program compiled once, by this run or an
  earlier one, is read back instead of compiled. Measured on tests/clone_experiment_test.py
  (2 shared cores, BUILD_NOTES.md): CPU 85 s without the cache, 89 s with an empty one, 29 s with
  a warm one. So it pays from the second run on (and where a run repeats a program); set
  `JAX_COMPILATION_CACHE_DIR=` (empty) to turn it off.
"""

import os
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'hyperinit-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')   # cache every program
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
