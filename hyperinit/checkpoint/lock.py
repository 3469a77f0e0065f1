"""One run per workdir: `WorkdirLock`, an exclusive `flock` on `<workdir>/run.lock`.

Two runs on one workdir delete each other's unfinished saves and write metrics twice, so
the second refuses at once, naming the holder:

    with checkpoint.WorkdirLock(workdir):      # WorkdirBusyError: 'pid 123 on host-a ...'
      ...

The kernel drops an `flock` when its process dies (SIGKILL, a crash), so a lock left by a
dead run never blocks a rerun; the file's JSON (pid, host, start time) only names the
holder.  `flock` works on local disks and on NFS (Linux maps it onto NFS byte-range
locks); object stores (`gs://...`) have no locks, and no lock is taken there.

Multi-host: only process 0 takes the lock.  The processes of one job share a workdir by
design, so a per-process lock would refuse the job itself; a second job's process 0
meets the first job's lock and refuses, and its other processes then fail at their first
collective with process 0 (the job stops, it does not write).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

import jax

from hyperinit.checkpoint.resume import CheckpointError

FILE = 'run.lock'


class WorkdirBusyError(CheckpointError):
  """Another live run holds the workdir's lock."""


class WorkdirLock:
  """An exclusive lock on a workdir for the life of a run (a context manager).

  Args:
    workdir: the run directory (created if missing).
    enabled: False (or process index != 0, or an object-store path): a no-op.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, FILE)
    self.enabled = enabled and jax.process_index() == 0 and '://' not in self.workdir
    self._fd = None

  def acquire(self) -> 'WorkdirLock':
    """Takes the lock; raises WorkdirBusyError naming the holder if a live run has it."""
    if not self.enabled or self._fd is not None:
      return self
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
        raise
      raise WorkdirBusyError(f'workdir {self.workdir} is in use by another run ({holder(self.path)}'
                             '); wait for it to finish or stop it, or use another --workdir'
                             ) from None
    info = {'pid': os.getpid(), 'host': socket.gethostname(),
            'since': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)        # the file stays (unlinking it would race a new holder)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def holder(path: str) -> str:
  """'pid 123 on host-a since <time>' from a lock file (what is known of the holder)."""
  try:
    with open(path) as f:
      info = json.loads(f.read() or '{}')
  except (OSError, ValueError):
    info = {}
  if not info:
    return 'holder unknown: it is still starting'
  return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
