"""Multi-process start-up (`jax.distributed.initialize`) and preemption signals.

On a TPU pod, a SLURM allocation, GKE or under mpirun, `jax.distributed.
initialize()` finds the coordinator and process ids itself; elsewhere pass
them (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

from __future__ import annotations

import os
import signal
import threading

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


def exit_during_startup(preempted_exit_code: int) -> None:
  """Until the training loop takes over, SIGTERM exits with `preempted_exit_code`
  (nothing new exists to save during restore or compile, and a job script that
  requeues on that status requeues) and SIGINT exits 130, each saying so.

  Call it first thing in a main; `PreemptionWatcher` replaces these handlers while
  steps run (and puts them back after).
  """
  def handle(signum, frame):
    del frame
    code = preempted_exit_code if signum == signal.SIGTERM else 130
    logging.warning('%s during start-up (before the first step): nothing new to save, the '
                    'last checkpoint (if any) stays the resume point; exiting with status %d',
                    signal.Signals(signum).name, code)
    raise SystemExit(code)
  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, handle)


class PreemptionWatcher:
  """Turns SIGTERM into a flag that all processes agree on at a step boundary.

  Single process: `requested(step)` is the local flag (free).  Several
  processes: every `sync_every` steps the flags are all-gathered, so every
  process stops, saves and exits at the same step.
  """

  def __init__(self, sync_every: int = 10, signals=(signal.SIGTERM, signal.SIGINT)):
    self.sync_every = max(1, int(sync_every))
    self._flag = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    else:
      logging.warning('not in the main thread: SIGTERM will not trigger a checkpoint')

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self._flag:
      raise KeyboardInterrupt('second Ctrl-C: stopping without saving')
    logging.warning('received %s: will save a checkpoint and stop at the next step%s',
                    signal.Signals(signum).name,
                    ' (Ctrl-C again to stop at once, without saving)'
                    if signum == signal.SIGINT else '')
    self._flag = True

  def requested(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self._flag
    if step % self.sync_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.array([self._flag], np.int32))
    return bool(np.any(flags))

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
