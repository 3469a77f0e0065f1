"""Multi-process start-up (`jax.distributed.initialize`) and preemption signals.

On a TPU pod, a SLURM allocation, GKE or under mpirun, `jax.distributed.
initialize()` finds the coordinator and process ids itself; elsewhere pass
them (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from typing import Any

import jax
import numpy as np
from absl import logging


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False,
               cpu_collectives: str | None = None) -> bool:
  """Starts the JAX distributed runtime when asked to; returns whether it did.

  Args:
    coordinator_address: 'host:port' of process 0 (env JAX_COORDINATOR_ADDRESS).
    num_processes: number of processes (env JAX_NUM_PROCESSES).
    process_id: this process's id (env JAX_PROCESS_ID).
    auto: initialise with cluster auto-detection (TPU pod, SLURM, GKE, MPI)
      even without an address.
    cpu_collectives: e.g. 'gloo', for multi-process CPU runs.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS') or None
  if num_processes is None and env.get('JAX_NUM_PROCESSES'):
    num_processes = int(env['JAX_NUM_PROCESSES'])
  if process_id is None and env.get('JAX_PROCESS_ID'):
    process_id = int(env['JAX_PROCESS_ID'])
  if cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation', cpu_collectives)
  if not (auto or coordinator_address):
    return False
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


# --- stop signals: SIGTERM / Ctrl-C set a flag, read at safe points ---------------------------
#
# A handler that raises (SystemExit) can fire anywhere: inside a gc callback of XLA (where
# the exception is swallowed and the run trains on), or while a compile or an orbax thread
# is half done (a segfault at exit).  So the handlers only set a flag; the trainer reads it
# between start-up phases (`stop_requested`) and at every step boundary (`PreemptionWatcher`).

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_STOP: dict[str, Any] = {'signal': None, 'previous': None}


def _handle(signum, frame):
  del frame
  if signum == signal.SIGINT and _STOP['signal'] is not None:
    raise KeyboardInterrupt('second Ctrl-C: stopping without saving')
  _STOP['signal'] = signal.Signals(signum).name
  logging.warning('received %s: will save a checkpoint (if there is anything new) and stop at the '
                  'next safe point%s', _STOP['signal'],
                  ' (Ctrl-C again to stop at once, without saving)' if signum == signal.SIGINT
                  else '')


def catch_stop_signals() -> bool:
  """Makes SIGTERM and SIGINT set the stop flag (cleared now) for the rest of the process.

  Call it first thing in a main, so a signal during start-up (restore, compile) is seen
  too.  Returns False (and does nothing) outside the main thread.
  """
  if threading.current_thread() is not threading.main_thread():
    return False
  previous = {sig: signal.signal(sig, _handle) for sig in _SIGNALS}
  if _STOP['previous'] is None:
    _STOP['previous'] = previous
  _STOP['signal'] = None
  return True


def stop_requested() -> str | None:
  """The name of the stop signal received ('SIGTERM', 'SIGINT'), or None."""
  return _STOP['signal']


class stop_signals:  # pylint: disable=invalid-name
  """Context manager: the stop flag is caught inside the block.

  If a main already called `catch_stop_signals`, it changes nothing (a signal that arrived
  before the block still counts); otherwise it installs the handlers with a clear flag and
  puts the previous handlers back (and clears the flag) on exit, so a library call
  (notebook, test) leaves the process as it found it.
  """

  def __enter__(self) -> 'stop_signals':
    self._owner = _STOP['previous'] is None and catch_stop_signals()
    if not self._owner and threading.current_thread() is not threading.main_thread():
      logging.warning('not in the main thread: SIGTERM will not trigger a checkpoint')
    return self

  def __exit__(self, *exc) -> None:
    if self._owner:
      for sig, handler in _STOP['previous'].items():
        signal.signal(sig, handler)
      _STOP['previous'], _STOP['signal'] = None, None


def exit_during_startup(preempted_exit_code: int) -> None:
  """Deprecated: use `catch_stop_signals()` (a signal sets a flag; nothing exits from the
  handler) and exit with the preempted status when the run returns preempted."""
  del preempted_exit_code
  warnings.warn('distributed.exit_during_startup is deprecated: call catch_stop_signals() and '
                'exit with the preempted status yourself', DeprecationWarning, stacklevel=2)
  catch_stop_signals()


class PreemptionWatcher:
  """The stop flag, agreed by all processes at a step boundary.

  Single process: `requested(step)` is the local flag (free).  Several
  processes: every `sync_every` steps the flags are all-gathered, so every
  process stops, saves and exits at the same step.
  """

  def __init__(self, sync_every: int = 10):
    self.sync_every = max(1, int(sync_every))
    self._signals = stop_signals().__enter__()

  def requested(self, step: int) -> bool:
    flag = stop_requested() is not None
    if jax.process_count() == 1:
      return flag
    if step % self.sync_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.array([flag], np.int32))
    return bool(np.any(flags))

  def close(self) -> None:
    if self._signals is not None:
      self._signals.__exit__(None, None, None)
      self._signals = None
