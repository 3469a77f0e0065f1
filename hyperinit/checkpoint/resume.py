"""The resume policy of the `Checkpointer`: which step a run resumes from, falling back to an
older step when one fails, and setting broken or superseded steps aside (never deleting them).

    ck = checkpoint.Checkpointer(root)
    step = ck.resume_step()                        # newest step that checks out, or None
    restored = ck.restore_with_fallback(target, step, data_iter)   # that one or an older one
    restored = ck.restore_latest(target)           # both in one call (None: start fresh)
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import jax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from hyperinit import _checksums


class CheckpointError(RuntimeError):
  """A checkpoint is missing, incomplete, corrupt, or does not fit the run."""


class Restored(NamedTuple):
  """What `Checkpointer.restore_with_fallback` restored: the step, the state (`target`'s
  type) and whether the data iterator's position was restored."""
  step: int
  state: Any
  data_restored: bool


class ResumePolicy:
  """The resume and set-aside methods of `Checkpointer` (uses its all_steps, meta, verify,
  restore, data_state_available, manager and directory)."""

  def set_aside(self, steps: list[int] | int, why: str) -> list[str]:
    """Moves step directories out of the checkpoint root (never deletes them).

    They go to `<root>.set_aside/<step>-<why>-<time>`, where neither orbax nor
    a resume sees them; returns the new paths.  Process 0 moves, every process
    waits for it.
    """
    steps = [steps] if isinstance(steps, int) else list(steps)
    dest_root = epath.Path(os.fspath(self.directory) + '.set_aside')
    stamp = time.strftime('%Y%m%dT%H%M%S')
    out = []
    for s in steps:
      name, n = f'{s}-{why}-{stamp}', 1
      while (dest_root / name).exists():
        n += 1
        name = f'{s}-{why}-{stamp}-{n}'
      out.append(os.fspath(dest_root / name))
    if jax.process_index() == 0:
      dest_root.mkdir(parents=True, exist_ok=True)
      for s, dst in zip(steps, out):
        os.replace(os.fspath(self.directory / str(s)), dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('hyperinit_checkpoint_set_aside')
    self.manager.reload()
    return out

  # --- the resume policy -----------------------------------------------------

  def resume_step(self, restore_step: int | None = None, *,
                  restart_if_all_corrupt: bool = False) -> int | None:
    """The step a run resumes from; None: no checkpoint (a fresh run).

    restore_step None: the newest step whose checksums and metadata check out;
    the newer steps that do not are set aside ('broken') with a warning naming
    each step and the reason.  If every step fails, CheckpointError lists them
    and nothing is moved, unless `restart_if_all_corrupt`: then they are all set
    aside and None is returned (the run starts over).  A step without checksums
    (older versions) is used with a warning that it is unverified.
    restore_step k: step k (CheckpointError if it is missing or corrupt: the
    user chose it).
    """
    if restore_step is not None:
      step = self._check_step(int(restore_step))
      self._warn_unverified(step)
      return step
    broken = []
    for step in reversed(self.all_steps()):
      try:
        self._check_step(step)
        unverified = not self.verify(step)
        self.meta(step)
      except CheckpointError as e:
        broken.append((step, e))
        continue
      for s, e in broken:
        self.skip_broken(s, e)
      if unverified:
        self._warn_unverified(step)
      return step
    if not broken:
      return None
    listing = '; '.join(f'step {s}: {e}' for s, e in broken)
    if not restart_if_all_corrupt:
      raise CheckpointError(
          f'every checkpoint step in {self.directory} is broken ({listing}); nothing was moved. '
          'Set config.checkpoint.restart_if_all_corrupt=True to set them aside (kept in '
          f'{self.directory}.set_aside) and start over from step 0')
    moved = self.set_aside([s for s, _ in broken], 'broken')
    logging.warning('every checkpoint step was broken (%s); set aside as %s; '
                    'checkpoint.restart_if_all_corrupt: starting over from step 0', listing, moved)
    return None

  def _warn_unverified(self, step: int) -> None:
    if self._local and not _checksums.has(os.fspath(self.directory / str(step))):
      logging.warning('checkpoint step %d has no checksums (saved by a version before they were '
                      'recorded): restoring it unverified', step)

  def restore_with_fallback(self, target: Any, step: int, data_iter: Any = None, *,
                            explicit: bool = False, data_any_process_count: bool = False,
                            reset_data: bool = False) -> Restored:
    """Restores `step`, else the next older step that restores (see `restore` for the args).

    A step that fails is set aside ('broken', with a warning) only once an older
    step has restored into the same target, so a target that fits no step moves
    nothing (the first error is raised).  `explicit` (the user chose `step`):
    no fallback; once it has restored, the later steps are set aside
    ('after-restore-<step>') so the run can save its own.  `reset_data`: a step
    without this process layout's iterator state restores without it
    (`Restored.data_restored` False: start a fresh iterator).
    """
    failed = []
    while True:
      use_data = data_iter is not None and not (
          reset_data and not self.data_state_available(step, data_any_process_count))
      try:
        state, _ = self.restore(target, step, data_iter if use_data else None,
                                data_any_process_count=data_any_process_count)
        break
      except CheckpointError as e:
        older = [x for x in self.all_steps() if x < step]
        if explicit or not older:
          raise (failed[0][1] if failed else e) from None
        failed.append((step, e))
        step = older[-1]
    for s, e in failed:
      self.skip_broken(s, e)
    if explicit:
      self.set_aside_later(step)
    return Restored(step, state, use_data or data_iter is None)

  def restore_latest(self, target: Any, data_iter: Any = None, **kw) -> Restored | None:
    """`resume_step()` then `restore_with_fallback`: the newest step that checks out and
    restores into `target`, or None (no checkpoint: start fresh).  `kw`: `restore_step`,
    `restart_if_all_corrupt`, and `restore_with_fallback`'s keyword arguments."""
    restore_step = kw.pop('restore_step', None)
    step = self.resume_step(restore_step,
                            restart_if_all_corrupt=kw.pop('restart_if_all_corrupt', False))
    if step is None:
      return None
    return self.restore_with_fallback(target, step, data_iter,
                                      explicit=restore_step is not None, **kw)

  def set_aside_later(self, step: int) -> list[str]:
    """Sets the steps after `step` aside ('after-restore-<step>'), so that a run resumed from
    an earlier step saves its own steps instead of colliding with them."""
    later = [s for s in self.all_steps() if s > step]
    if not later:
      return []
    moved = self.set_aside(later, f'after-restore-{step}')
    logging.warning('checkpoint.restore_step=%d: the later steps %s were set aside (not '
                    'deleted) so that this run can save its own: %s', step, later, moved)
    return moved

  def skip_broken(self, step: int, error: BaseException) -> str:
    """Sets a step that failed to restore aside, with a warning; returns where it went."""
    moved = self.set_aside(step, 'broken')[0]
    logging.warning('checkpoint step %d cannot be restored (%s); set aside as %s; resuming '
                    'from the next older step, if any', step, error, moved)
    return moved
