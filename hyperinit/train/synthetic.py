"""Synthetic, learnable datasets behind `grain.DataLoader`s (benchmarks, tests).

They follow the `hyperinit.data` loader contract exactly (global batch size,
per-process rows of the same global batch, checkpointable iterators), so the
trainer cannot tell them from real data; they need no files.  Select with `config.data.dataset =
'synthetic'`.

LM records: a noisy walk through a fixed random permutation of the vocabulary
(next = perm[current] with probability 0.9, else uniform), so the best possible
loss is far below log(vocab) and a working trainer visibly learns.
Image records: Gaussian noise around one fixed random template per class.
"""

from __future__ import annotations

import sys
from typing import Any

import grain
import numpy as np


class LMSource:
  """Random-access source of {'inputs', 'targets'}: int32 [seq_len] each."""

  def __init__(self, num_records: int, seq_len: int, vocab_size: int, seed: int = 0):
    # The permutation (the "language") is the same for every split; `seed`
    # only picks the records, so held-out splits measure generalisation.
    self._n, self._t, self._v, self._seed = int(num_records), int(seq_len), int(vocab_size), seed
    self._perm = np.random.default_rng(1234).permutation(self._v)

  def __len__(self) -> int:
    return self._n

  def __repr__(self) -> str:  # grain validates restored iterators against repr(source)
    return f'LMSource(num_records={self._n}, seq_len={self._t}, vocab_size={self._v}, seed={self._seed})'

  def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, 2, int(idx)])
    seq = np.empty(self._t + 1, np.int32)
    seq[0] = rng.integers(self._v)
    jump = rng.random(self._t) < 0.1
    rand = rng.integers(self._v, size=self._t)
    for i in range(self._t):
      seq[i + 1] = rand[i] if jump[i] else self._perm[seq[i]]
    return {'inputs': seq[:-1], 'targets': seq[1:]}


class ImageSource:
  """Random-access source of {'image': float32 [H, W, C], 'label': int32 []}."""

  def __init__(self, num_records: int, shape: tuple[int, int, int], num_classes: int,
               seed: int = 0):
    self._n, self._shape, self._k, self._seed = int(num_records), tuple(shape), num_classes, seed
    self._templates = np.random.default_rng(1234).normal(  # same classes for every split
        size=(num_classes,) + self._shape).astype(np.float32)

  def __len__(self) -> int:
    return self._n

  def __repr__(self) -> str:
    return (f'ImageSource(num_records={self._n}, shape={self._shape}, num_classes={self._k}, '
            f'seed={self._seed})')

  def __getitem__(self, idx: int) -> dict[str, Any]:
    rng = np.random.default_rng([self._seed, 4, int(idx)])
    label = int(rng.integers(self._k))
    image = self._templates[label] + rng.normal(size=self._shape).astype(np.float32)
    return {'image': image.astype(np.float32), 'label': np.int32(label)}


class _Rows(grain.MapDataset):
  """This process's rows of each global batch: element j is parent element
  (j // b) * B + p * b + j % b (b = B / P), so the global batch at a step is the
  same for any process count (as in `hyperinit.data`'s default 'rows' mode)."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, shard_index: int,
               shard_count: int):
    super().__init__(parent)
    self._global, self._b = global_batch, global_batch // shard_count
    self._offset = shard_index * self._b
    n = len(parent)
    self._length = n if n >= sys.maxsize else (n // global_batch) * self._b

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f'_Rows(global_batch={self._global}, rows={self._offset}:+{self._b})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if index >= self._length:
      raise IndexError(index)
    step, row = divmod(index, self._b)
    return self._parent[step * self._global + self._offset + row]


def make_loader(source: Any, batch_size: int, seed: int = 0, shuffle: bool = True,
                num_epochs: int | None = None, shard_index: int | None = None,
                shard_count: int | None = None, worker_count: int = 0) -> grain.IterDataset:
  """Batches of `source` for this process: rows [p*B/P, (p+1)*B/P) of each global batch B.

  Returns a grain IterDataset; `iter()` gives a checkpointable iterator whose
  state means the same on every process.
  """
  import jax  # local: only when the caller leaves the shard to jax
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if batch_size % shard_count:
    raise ValueError(f'global batch_size={batch_size} is not divisible by shard_count={shard_count}')
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = _Rows(ds.repeat(num_epochs), batch_size, shard_index, shard_count)
  ds = ds.batch(batch_size // shard_count, drop_remainder=True).to_iter_dataset()
  if worker_count:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return ds


def lm_loader(seq_len: int, batch_size: int, vocab_size: int, seed: int = 0, split: str = 'train',
              num_records: int = 4096, **kw) -> grain.IterDataset:
  """Synthetic LM batches {'inputs', 'targets'}: int32 [batch_size // shard_count, seq_len]."""
  src = LMSource(num_records, seq_len, vocab_size, seed=0 if split == 'train' else 1)
  return make_loader(src, batch_size, seed=seed, **kw)


def image_loader(shape: tuple[int, int, int], num_classes: int, batch_size: int, seed: int = 0,
                 split: str = 'train', num_records: int = 4096, **kw) -> grain.IterDataset:
  """Synthetic image batches {'image': float32 [b, H, W, C], 'label': int32 [b]}."""
  src = ImageSource(num_records, shape, num_classes, seed=0 if split == 'train' else 1)
  return make_loader(src, batch_size, seed=seed, **kw)
