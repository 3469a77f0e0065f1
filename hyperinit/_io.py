"""Atomic file and directory writes: the one way anything in hyperinit writes a result.

A reader (a resuming run, a notebook, `transformers.from_pretrained`) sees either the
old file / tree or the whole new one, never half of it: data goes to a temporary name
beside the target, is fsynced, and is renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[str], Any]) -> str:
  """Writes `data` (text, bytes, or `fn(tmp_path)` that writes the file) to `path` atomically.

  A callable lets libraries that write files themselves (e.g. matplotlib's
  `savefig`) write to the temporary name; it keeps `path`'s suffix so format
  detection by extension still works.
  """
  path = os.fspath(path)
  parent, base = os.path.split(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{base}.tmp-', suffix=os.path.splitext(base)[1], dir=parent)
  try:
    if callable(data):
      os.close(fd)
      data(tmp)
    else:
      with os.fdopen(fd, 'wb') as f:
        f.write(data.encode() if isinstance(data, str) else data)
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  return path


def write_json(path: str | os.PathLike, obj: Any, **kwargs) -> str:
  """`json.dump(obj)` to `path` atomically (indent=1 unless given)."""
  kwargs.setdefault('indent', 1)
  return atomic_write(path, json.dumps(obj, **kwargs) + '\n')


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False,
               overwrite_hint: str = 'overwrite=True') -> Iterator[str]:
  """Yields a temp dir beside `path` that becomes `path` (a whole tree) only if the block succeeds.

  An existing non-empty `path` is refused (the error says to pass `overwrite_hint`)
  unless overwrite=True, in which case it is replaced by two renames (old aside,
  new in) and then deleted.  Every file written is fsynced before the rename.
  """
  path = os.path.abspath(os.fspath(path))
  parent, base = os.path.split(path)
  if os.path.lexists(path):
    if not os.path.isdir(path):
      raise FileExistsError(f'{path!r} exists and is not a directory')
    if os.listdir(path) and not overwrite:
      raise FileExistsError(f'{path!r} exists and is not empty; pass {overwrite_hint} to replace '
                            'it')
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{base}.tmp-', dir=parent)
  try:
    yield tmp
    for root, _, names in os.walk(tmp):
      for name in names:
        with open(os.path.join(root, name), 'rb') as f:
          os.fsync(f.fileno())
    os.chmod(tmp, 0o755)
    if os.path.isdir(path) and os.listdir(path):
      old = tempfile.mkdtemp(prefix=f'.{base}.old-', dir=parent)
      os.rename(path, os.path.join(old, base))
      os.rename(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, path)  # replaces an empty directory
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
