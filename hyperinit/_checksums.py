"""Per-file CRC32 checksums of a checkpoint step directory: written after the step is
committed, verified before it is restored.

Orbax's commit makes a step directory whole or absent, but not *correct*: a flipped bit
in a params chunk (bad disk, bad copy) restores silently, with a kernel off by a little or
by NaN.  `write(step_dir)` records every file's size and CRC32 in `checksums.json`;
`verify(step_dir)` recomputes them and raises `ChecksumError` naming the first file
that differs.  A step without `checksums.json` (written by a version before this existed)
is reported as unverified, not as broken.

The checkpointer writes them into an async step's temporary directory before orbax renames
it, so orbax's own bookkeeping files at the top of the step (`ORBAX_BOOKKEEPING`: the commit
timestamp, the commit marker), written after that, are not recorded; they hold no data.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

from hyperinit import _io

FILE = 'checksums.json'
ORBAX_BOOKKEEPING = ('_CHECKPOINT_METADATA', 'commit_success.txt')
_CHUNK = 16 << 20


class ChecksumError(RuntimeError):
  """A checkpoint file's content differs from the checksum recorded when it was saved."""


def _crc(path: str) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, files in os.walk(step_dir):
    for name in files:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != FILE and rel not in ORBAX_BOOKKEEPING and not name.startswith('.'):
        out.append(rel)
  return sorted(out)


def compute(step_dir: str) -> dict[str, Any]:
  """{relative path: [size, crc32]} of every file under `step_dir` (but checksums.json)."""
  return {rel: [os.path.getsize(os.path.join(step_dir, rel)), _crc(os.path.join(step_dir, rel))]
          for rel in _files(step_dir)}


def write(step_dir: str) -> None:
  """Records the checksums of `step_dir`'s files in `step_dir/checksums.json` (atomically)."""
  _io.atomic_write(os.path.join(step_dir, FILE), json.dumps(
      {'algorithm': 'crc32', 'files': compute(step_dir)}, indent=0))


def has(step_dir: str) -> bool:
  return os.path.isfile(os.path.join(step_dir, FILE))


def verify(step_dir: str, items: tuple[str, ...] | None = None) -> bool:
  """Checks `step_dir` against its checksums.json; False if it has none.

  Args:
    step_dir: a checkpoint step directory.
    items: only files under these top-level items (e.g. ('params', 'meta')); None: all.

  Raises:
    ChecksumError: a recorded file is missing, has another size, or another CRC32.
  """
  if not has(step_dir):
    return False
  with open(os.path.join(step_dir, FILE)) as f:
    want = json.load(f)['files']
  for rel, (size, crc) in sorted(want.items()):
    if items is not None and rel.split(os.sep)[0] not in items:
      continue
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      raise ChecksumError(f'{path} is missing (recorded in {FILE} when the step was saved)')
    if os.path.getsize(path) != size:
      raise ChecksumError(f'{path} has {os.path.getsize(path)} bytes, {size} when saved')
    got = _crc(path)
    if got != crc:
      raise ChecksumError(f'{path}: CRC32 {got:08x} differs from {crc:08x} recorded when the '
                          'step was saved (the file is corrupt)')
  return True
