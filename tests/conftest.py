"""Test-wide settings, set before jax is imported (they reach the subprocesses tests start too).

- 8 forced host CPU devices (`XLA_FLAGS`): the multi-device tests shard over them. A test module
  needs its own `os.environ.setdefault('XLA_FLAGS', ...)` only when it must also run alone as a
  script (`python tests/x_test.py`); under pytest this file sets it first.
- jax's persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`, default a directory in the
  system temp dir): the smoke experiments and the mains run as subprocesses compile the same small
  programs again and again (the horizon smoke issues 340 compile requests); with the cache a
  repeated program, in this run or a later one, is read back instead of compiled (measured: a
  second run of the horizon smoke hits the cache for 340 of 340 requests). Set
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
