"""Language-model pipeline: tfds text documents -> tokens -> packed [batch, seq_len] int32 batches.

Per epoch the documents are shuffled (a new permutation each epoch, from the seed), each is
tokenized and followed by the tokenizer's separator (`eos_id`; byte 0xFF for the byte tokenizer),
the stream is cut into chunks of seq_len + 1 tokens with no padding (a chunk may span documents),
and a chunk c gives inputs = c[:-1], targets = c[1:].
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import grain
import numpy as np
import tensorflow_datasets as tfds

from hyperinit.data import pipeline, sources
from hyperinit.data import tokenizers as tokenizers_lib

# Per-dataset text feature when it is not called 'text'.
TEXT_FEATURES = {'pg19': 'book_text', 'cnn_dailymail': 'article', 'scientific_papers': 'article'}


def _clean_wiki40b(text: bytes) -> bytes:
  """wiki40b marks structure with _START_ARTICLE_/_START_SECTION_/_START_PARAGRAPH_/_NEWLINE_."""
  for marker in (b'_START_ARTICLE_\n', b'_START_SECTION_\n', b'_START_PARAGRAPH_\n'):
    text = text.replace(marker, b'')
  return text.replace(b'_NEWLINE_', b'\n')


# Per-dataset text cleaning (on UTF-8 bytes), keyed by the dataset's base name.
TEXT_CLEANERS: dict[str, Callable[[bytes], bytes]] = {'wiki40b': _clean_wiki40b}


class _Encode:
  """Example dict -> int32 [n + 1]: the tokens of its text and the separator (picklable)."""

  def __init__(self, key: str, tokenizer: tokenizers_lib.Tokenizer,
               cleaner: Callable[[bytes], bytes] | None):
    self._key, self._tok, self._clean = key, tokenizer, cleaner

  def __call__(self, example: dict[str, Any]) -> np.ndarray:
    text = example[self._key]
    if isinstance(text, str):
      text = text.encode('utf-8')
    text = bytes(text)
    if self._clean is not None:
      text = self._clean(text)
    ids = self._tok.encode(text)
    out = np.empty((ids.size + 1,), np.int32)
    out[:-1] = ids
    out[-1] = self._tok.eos_id
    return out


def _to_lm_batch(chunks: np.ndarray) -> dict[str, np.ndarray]:
  return {'inputs': np.ascontiguousarray(chunks[:, :-1]),
          'targets': np.ascontiguousarray(chunks[:, 1:])}


class _Rows:

  def __init__(self, start: int, size: int):
    self._start, self._size = start, size

  def __call__(self, batch: np.ndarray) -> np.ndarray:
    return batch[self._start:self._start + self._size]


def open_text(dataset: str, split: str, data_dir: Any = None, text_key: str | None = None):
  """(data source, text feature name, cleaner, builder) for a text dataset."""
  builder = sources.open_builder(dataset, data_dir)
  base = sources.dataset_base_name(builder)
  key = sources.pick_feature(builder, tfds.features.Text,
                             (TEXT_FEATURES.get(base, 'text'), 'text'), text_key, 'text')
  return sources.open_split(builder, split), key, TEXT_CLEANERS.get(base), builder


def lm_loader(dataset: str = 'pydoc_text', split: str = 'train', seq_len: int = 128,
              batch_size: int = 32, seed: int = 0, data_dir: str | os.PathLike | None = None,
              tokenizer: Any = None, num_epochs: int | None = None,
              shard_index: int | None = None, shard_count: int | None = None,
              worker_count: int = 0, *, shuffle: bool = True, shard_mode: str = 'rows',
              text_key: str | None = None, read_threads: int = 4) -> grain.IterDataset:
  """Packed language-model batches from a tfds text dataset.

  Args:
    dataset: tfds name (embedded 'pydoc_text', or a prepared 'lm1b', 'wiki40b/en', ...) or the
      path of a prepared version dir.
    split: tfds split, slicing allowed ('train', 'validation', 'train[:5%]').
    seq_len: tokens per row.
    batch_size: GLOBAL batch; this process yields batch_size // shard_count rows.
    seed: shuffle seed (a new permutation per epoch, derived from it).
    data_dir: tfds data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
    tokenizer: None/'byte' (vocab 256, separator 255), a tokenizers JSON path, or a Tokenizer.
    num_epochs: None repeats forever; evaluation uses 1.
    shard_index, shard_count: this process's shard (default jax.process_index/count()).
    worker_count: 0 reads with threads in this process (batches do not depend on it); > 0 adds
      grain multiprocess prefetch with that many workers (each packs its own slice of the
      documents, so batches differ from worker_count=0 but are deterministic for a given count).
    shuffle: shuffle the documents each epoch.
    shard_mode: 'rows' (default: every process packs the same global stream and keeps its rows,
      so batches do not depend on the process count) or 'docs' (each process reads only every
      shard_count-th document: cheaper for huge corpora on many hosts, but the data then depends
      on the process count and processes may yield different numbers of batches).
    text_key: text feature to read (default: per-dataset table, 'text', or the only Text).
    read_threads: threads reading and tokenizing documents.

  Returns:
    A grain IterDataset; `iter()` gives a checkpointable iterator (get_state/set_state) of
    {'inputs': int32 [batch_size // shard_count, seq_len], 'targets': int32 [same]} with
    targets[:, t] == inputs[:, t + 1] inside a row (both cut from one chunk of seq_len + 1).
  """
  if seq_len < 1:
    raise ValueError(f'seq_len must be >= 1, got {seq_len}')
  if shard_mode not in ('rows', 'docs'):
    raise ValueError(f"shard_mode must be 'rows' or 'docs', got {shard_mode!r}")
  pipeline.check_epochs(num_epochs)
  shard_index, shard_count, local_batch = pipeline.resolve_shard(batch_size, shard_index,
                                                                 shard_count)
  tok = tokenizers_lib.get_tokenizer(tokenizer)
  source, key, cleaner, _ = open_text(dataset, split, data_dir, text_key)
  if len(source) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError(f'split {split!r} of {dataset!r} is empty')

  docs = grain.MapDataset.source(source)
  if shard_mode == 'docs':
    docs = docs[shard_index::shard_count]
  if shuffle:
    docs = docs.shuffle(seed=seed)
  docs = docs.repeat(num_epochs)
  docs = docs.map(_Encode(key, tok, cleaner))
  stream = docs.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                  prefetch_buffer_size=64))
  chunks = pipeline.PackIterDataset(stream, seq_len + 1)
  if shard_mode == 'rows':
    batches = chunks.batch(batch_size, drop_remainder=True)
    if shard_count > 1:
      batches = batches.map(_Rows(shard_index * local_batch, local_batch))
  else:
    batches = chunks.batch(local_batch, drop_remainder=True)
  batches = batches.map(_to_lm_batch)
  return pipeline.multiprocess(batches, worker_count)


def token_counts(dataset: str = 'pydoc_text', split: str = 'train',
                 data_dir: str | os.PathLike | None = None, tokenizer: Any = None,
                 max_documents: int | None = None, text_key: str | None = None) -> np.ndarray:
  """Token frequencies over a split, separators included: int64 [vocab_size].

  Documents are read in source order; `max_documents` stops early (for huge corpora).
  """
  tok = tokenizers_lib.get_tokenizer(tokenizer)
  source, key, cleaner, _ = open_text(dataset, split, data_dir, text_key)
  n = len(source) if max_documents is None else min(len(source), max_documents)
  encode = _Encode(key, tok, cleaner)
  counts = np.zeros((tok.vocab_size,), np.int64)
  docs = grain.MapDataset.source(source)[:n].map(encode).to_iter_dataset(
      grain.ReadOptions(num_threads=4, prefetch_buffer_size=64))
  for ids in docs:
    counts += np.bincount(ids, minlength=tok.vocab_size)[:tok.vocab_size]
  return counts


def unigram_entropy(dataset: str = 'pydoc_text', split: str = 'train',
                    data_dir: str | os.PathLike | None = None, tokenizer: Any = None,
                    max_documents: int | None = None, text_key: str | None = None) -> float:
  """Entropy of the split's unigram token distribution, in nats/token.

  This is the cross-entropy of the best model that ignores context: the bar a language model's
  loss (natural log, as optax's softmax cross-entropy) must go well below to show it learned.
  """
  counts = token_counts(dataset, split, data_dir, tokenizer, max_documents, text_key)
  total = counts.sum()
  if total == 0:
    raise ValueError(f'split {split!r} of {dataset!r} has no tokens')
  p = counts[counts > 0] / total
  return float(-(p * np.log(p)).sum())


def corpus_stats(dataset: str = 'pydoc_text', data_dir: str | os.PathLike | None = None,
                 tokenizer: Any = None) -> dict[str, dict[str, float]]:
  """Per split: documents, UTF-8 bytes, tokens (separators included), unigram entropy (nats)."""
  builder = sources.open_builder(dataset, data_dir)
  out = {}
  for split in sorted(builder.info.splits):
    source, key, _, _ = open_text(dataset, split, data_dir)
    nbytes = sum(len(bytes(source[i][key])) for i in range(len(source)))
    counts = token_counts(dataset, split, data_dir, tokenizer)
    p = counts[counts > 0] / counts.sum()
    out[split] = {'documents': len(source), 'bytes': nbytes, 'tokens': int(counts.sum()),
                  'unigram_entropy_nats': float(-(p * np.log(p)).sum()),
                  'unigram_entropy_bits': float(-(p * np.log(p)).sum() / math.log(2))}
  return out
