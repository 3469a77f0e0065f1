"""Sizing a job's memory from shapes before allocating anything, and refusing what cannot fit.

    host, device = memory.clone_bytes(src_shapes, dst_shapes, with_opt_state=False)
    memory.check_fits(host, 'clone 64 -> 64e9 wide', limit=None, device_need=device)

A clone by 1e9 or a GHN target a million wide is sized from `models.param_shapes`
(abstract, no allocation) and refused with one line instead of running the host
out of memory.  The estimates are deliberately simple upper bounds (see each).
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax

from hyperinit import errors

GB = 1e9


def tree_bytes(tree: Any) -> int:
  """Bytes of a tree of arrays or `jax.ShapeDtypeStruct`s (Python ints: no overflow)."""
  return sum(math.prod(int(d) for d in x.shape) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def available_bytes() -> int | None:
  """Host memory available now (Linux MemAvailable; else free pages), None if unknown."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return None


def device_free_bytes(device: Any = None) -> int | None:
  """Free memory of an accelerator (None on CPU or when the backend does not say)."""
  device = device or jax.local_devices()[0]
  if device.platform == 'cpu':
    return None
  stats = device.memory_stats() or {}
  if 'bytes_limit' not in stats:
    return None
  return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))


def clone_bytes(src_shapes: Any, dst_shapes: Any, with_opt_state: bool = False
                ) -> tuple[int, int]:
  """(host, device) peak bytes of a clone: the source and the clone on the device, plus
  one more copy of the clone on the host (written to disk, or a converted dtype).

  With the optimizer state every tree counts three times (params and Adam's two moments).
  """
  k = 3 if with_opt_state else 1
  device = k * (tree_bytes(src_shapes) + tree_bytes(dst_shapes))
  return device + k * tree_bytes(dst_shapes), device


def check_fits(need: int, what: str, limit: int | None = None, device_need: int | None = None,
               flag: str = '--max_memory_gb') -> None:
  """Raises `errors.ResourceError` (one line) when `need` bytes exceed the limit.

  Args:
    need: estimated peak host bytes.
    what: the job, for the message (e.g. "clone 2x64 -> 2x64e9").
    limit: bytes allowed; None: the host's available memory now; 0: no check.
    device_need: bytes the accelerator must hold (checked against its free memory when
      the backend reports it, and `limit` is not 0).
    flag: the command-line flag that sets `limit`, named in the message.
  """
  if limit == 0:
    return
  have, source = (limit, f'{flag}={limit / GB:g}') if limit else (available_bytes(),
                                                                   'available on this host')
  if have is not None and need > have:
    raise errors.ResourceError(
        f'{what} needs about {need / GB:,.3g} GB of memory, more than the {have / GB:,.3g} GB '
        f'{source}; use a smaller factor or target, or a bigger machine ({flag}=0 skips this '
        'check)')
  free = device_free_bytes() if device_need else None
  if free is not None and device_need > free:
    raise errors.ResourceError(
        f'{what} needs about {device_need / GB:,.3g} GB on {jax.local_devices()[0].device_kind}, '
        f'which has {free / GB:,.3g} GB free; use a smaller factor or target ({flag}=0 skips '
        'this check)')
