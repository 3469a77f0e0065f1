"""Where a clone or a prediction may be written: checked before any work is done.

    roots = destinations.source_roots('runs/small')        # what must survive the write
    destinations.check_destination('runs/small', 'runs/big', overwrite=False)
    destinations.check_output('preds/gpt2', overwrite=False, flag='--out')

Outputs are written into a temporary directory beside the destination and renamed
into place (`hyperinit._io.atomic_dir`); with --overwrite the old destination is
deleted.  So a destination must not be, contain, or lie inside the source (the
run's workdir, the checkpoint root actually read, the step read), compared by real
path (symlinks and `..` resolved, not the paths as typed); and it must be a place a
rename can reach: not a mount point, not on a read-only file system.
"""

from __future__ import annotations

import os

from absl import logging

from hyperinit import checkpoint as ckpt_lib
from hyperinit import errors


def _real(path: str | os.PathLike) -> str:
  return os.path.realpath(os.path.abspath(os.fspath(path)))


def source_roots(src: str | os.PathLike) -> dict[str, str]:
  """{what: real path} of everything a clone of `src` reads or belongs to.

  For one of our checkpoints: the run's workdir (the root's parent when the root is
  `<workdir>/checkpoints`), the checkpoint root the path resolves to
  (`checkpoint.resolve`), the step directory when the path names one, and the path as
  given when it is none of those.  For a Hugging Face directory or any other path: the
  path itself.
  """
  typed = _real(src)
  if not os.path.isdir(src) or ckpt_lib.is_hf_dir(src):
    return {'source': typed}
  root, step = ckpt_lib.resolve(src)
  root = _real(root)
  out = {}
  if os.path.basename(root) == 'checkpoints':
    out['source run'] = os.path.dirname(root)
  out['checkpoint root'] = root
  if step is not None:
    out['checkpoint step'] = os.path.join(root, str(step))
  if typed not in out.values():
    out['source'] = typed
  return out


def _within(inner: str, outer: str) -> bool:
  return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def overlap(roots: dict[str, str], dst: str | os.PathLike) -> str | None:
  """Why writing `dst` would touch one of `roots` (None: it would not)."""
  d = _real(dst)
  for what, p in sorted(roots.items(), key=lambda kv: len(kv[1])):   # outermost first
    if d == p:
      return f'is the {what} {p!r}'
    if _within(d, p):
      return f'is inside the {what} {p!r}'
    if _within(p, d):
      return f'contains the {what} {p!r}'
  return None


def unwritable(path: str | os.PathLike) -> str | None:
  """Why `path` cannot be written by the rename of a directory beside it (None: it can)."""
  path = os.path.abspath(os.fspath(path))
  if os.path.lexists(path) and not os.path.isdir(path):
    return 'exists and is not a directory'
  if os.path.isdir(path) and os.path.ismount(path):
    ro = _read_only(path)
    return ('is a read-only mount point: nothing can be written there' if ro else
            'is a mount point: an output is built beside it and renamed into place, which a '
            'mount point refuses; name a new directory under it') + f', e.g. {path}/out'
  parent = os.path.dirname(path)
  while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
    parent = os.path.dirname(parent)
  if _read_only(parent):
    return f'its directory {parent!r} is on a read-only file system'
  if not os.access(parent, os.W_OK | os.X_OK):
    return f'its directory {parent!r} is not writable by this user'
  return None


def _read_only(path: str) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


def check_output(path: str | os.PathLike, overwrite: bool, flag: str = '--out') -> None:
  """Refuses, before any work, an output directory that cannot be or may not be written.

  Raises:
    errors.UserInputError: `path` is a mount point, read-only, or not a directory.
    FileExistsError: `path` is not empty and `overwrite` is False (the message names
      `--overwrite`, the flag of every main that writes an output).
  """
  why = unwritable(path)
  if why:
    raise errors.UserInputError(f'{flag} {os.fspath(path)!r} {why}')
  if os.path.isdir(path) and os.listdir(path):
    entries = sorted(os.listdir(path))
    held = ', '.join(entries[:5]) + (', ...' if len(entries) > 5 else '')
    if not overwrite:
      raise FileExistsError(f'{flag} {os.fspath(path)!r} exists and is not empty; pass '
                            f'--overwrite to replace it (it holds {held})')
    logging.warning('--overwrite: replacing %s (%d entries: %s) once the output is written',
                    path, len(entries), held)


def check_destination(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool) -> None:
  """`check_output` for a clone of `src`, first refusing a `dst` that overlaps the source.

  Raises:
    errors.UserInputError: `dst` is, contains or is inside the source run, its
      checkpoint root, the step read, or the source directory (by real path).
  """
  why = overlap(source_roots(src), dst)
  if why:
    raise errors.UserInputError(
        f'--dst {os.fspath(dst)!r} {why}: the clone is written there (and with --overwrite the '
        'old contents deleted), which would destroy or corrupt the source; pick a --dst outside '
        'the source run')
  check_output(dst, overwrite, '--dst')
