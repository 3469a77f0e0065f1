"""Pipeline pieces shared by the text and image loaders: process shards and per-process rows.

Sharding scheme ("rows", the default): every process walks the same global stream of examples
(same shuffle, same packing) and keeps only its own rows of each global batch: process p of P
with global batch B keeps rows [p*B/P, (p+1)*B/P).  So the global batch at step t is the same
whatever the number of processes (a 2-process run sees exactly the data of a 1-process run),
every process yields the same number of batches (no hang in a multi-host eval), and the iterator
state means the same thing on every process (it can be restored with another process count).
Images are only decoded for the process's own rows; text must be packed by every process.
"""

from __future__ import annotations

import sys
from typing import Any

import grain
import numpy as np


def resolve_shard(batch_size: int, shard_index: int | None,
                  shard_count: int | None) -> tuple[int, int, int]:
  """(shard_index, shard_count, per-process batch); defaults from jax.process_index/count()."""
  if shard_count is None or shard_index is None:
    import jax  # pylint: disable=g-import-not-at-top  (only when the caller leaves it to jax)
    shard_count = jax.process_count() if shard_count is None else shard_count
    shard_index = jax.process_index() if shard_index is None else shard_index
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index={shard_index} must be in [0, shard_count={shard_count})')
  if batch_size < 1 or batch_size % shard_count:
    raise ValueError(f'batch_size={batch_size} is the global batch and must be a positive '
                     f'multiple of shard_count={shard_count}')
  return shard_index, shard_count, batch_size // shard_count


def check_epochs(num_epochs: int | None) -> None:
  if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
    raise ValueError(f'num_epochs must be None (repeat forever) or a positive int, '
                     f'got {num_epochs!r}')


def multiprocess(ds: grain.IterDataset, worker_count: int) -> grain.IterDataset:
  """`ds` prefetched by `worker_count` grain worker processes (0: unchanged)."""
  if worker_count < 0:
    raise ValueError(f'worker_count must be >= 0, got {worker_count}')
  if worker_count == 0:
    return ds
  from absl import flags  # pylint: disable=g-import-not-at-top
  # grain's workers read absl flags; outside an absl main (a notebook, pytest) none were parsed.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))


class RowShardMapDataset(grain.MapDataset):
  """This process's rows of each global batch, in order: element j is parent element
  (j // b) * B + p * b + j % b  (b = B / P).

  With `pad=False` a last incomplete global batch is dropped.  With `pad=True` it is kept and
  padded to full size by repeating element 0; every element is then a pair (element, mask) with
  mask 1.0 for real and 0.0 for padding rows, so an evaluation can cover every example exactly.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, shard_index: int,
               shard_count: int, pad: bool = False):
    super().__init__(parent)
    self._b = global_batch // shard_count
    self._global, self._offset, self._pad = global_batch, shard_index * self._b, pad
    n = len(parent)
    if n >= sys.maxsize:  # repeated forever
      self._length = sys.maxsize
    else:
      batches = -(-n // global_batch) if pad else n // global_batch
      self._length = batches * self._b
    self._parent_len = n

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f'RowShardMapDataset(global_batch={self._global}, rows={self._offset}:+{self._b})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if index >= self._length:
      raise IndexError(index)
    step, row = divmod(index, self._b)
    source = step * self._global + self._offset + row
    if not self._pad:
      return self._parent[source]
    if source < self._parent_len:
      return self._parent[source], np.float32(1.0)
    return self._parent[0], np.float32(0.0)


class PackIterDataset(grain.IterDataset):
  """Concatenates token arrays (documents) and cuts the stream into chunks of `length`, no padding.

  A chunk may span several documents and a document several chunks; the tokens left over when
  the parent ends (fewer than `length`) are dropped.  The iterator state is the parent's state
  before the document in which the next chunk starts plus the offset into that document, so it
  stays small and restores exactly.
  """

  def __init__(self, parent: grain.IterDataset, length: int):
    super().__init__(parent)
    if length < 2:
      raise ValueError(f'packed length must be >= 2 (seq_len + 1), got {length}')
    self._length = length

  def __iter__(self) -> '_PackIterator':
    return _PackIterator(self._parent.__iter__(), self._length)

  def __str__(self) -> str:
    return f'PackIterDataset(length={self._length})'


class _PackIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, length: int):
    super().__init__(parent)
    self._length = length
    self._docs: list[tuple[Any, np.ndarray]] = []  # (parent state before it, tokens), in order
    self._offset = 0  # position in self._docs[0] of the next token
    self._available = 0  # tokens in self._docs from the offset on

  def _pull(self) -> None:
    state = self._parent.get_state()
    tokens = np.asarray(next(self._parent), np.int32).reshape(-1)
    self._docs.append((state, tokens))
    self._available += tokens.size

  def __next__(self) -> np.ndarray:
    while self._available < self._length:
      self._pull()  # StopIteration ends the stream; the remainder is dropped, never padded
    out = np.empty((self._length,), np.int32)
    filled = 0
    while filled < self._length:
      tokens = self._docs[0][1]
      take = min(self._length - filled, tokens.size - self._offset)
      out[filled:filled + take] = tokens[self._offset:self._offset + take]
      filled += take
      self._offset += take
      self._available -= take
      if self._offset == tokens.size:
        self._docs.pop(0)
        self._offset = 0
    return out

  def get_state(self) -> dict[str, Any]:
    if self._docs:
      return {'parent': self._docs[0][0], 'offset': self._offset}
    return {'parent': self._parent.get_state(), 'offset': 0}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['parent'])
    self._docs, self._offset, self._available = [], 0, 0
    if state['offset']:
      self._pull()
      self._offset = int(state['offset'])
      self._available -= self._offset
