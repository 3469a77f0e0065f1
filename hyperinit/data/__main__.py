"""Prepare the embedded datasets and print corpus statistics and loader throughput.

    python -m hyperinit.data [--data_dir=DIR] [--dataset=pydoc_text] [--image_dataset=digits]
                             [--tokenizer=PATH] [--bench_batches=200]
"""

from __future__ import annotations

import json
import time

from absl import app, flags

from hyperinit import data

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data dir (default $TFDS_DATA_DIR or '
                                '~/tensorflow_datasets)')
_DATASET = flags.DEFINE_string('dataset', 'pydoc_text', 'text dataset to describe')
_IMAGES = flags.DEFINE_string('image_dataset', 'digits', 'image dataset to describe ("" skips)')
_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'tokenizers JSON file (default: bytes)')
_BATCHES = flags.DEFINE_integer('bench_batches', 200, 'batches timed per loader (0 skips)')


def _throughput(loader, batches: int, per_batch: int) -> float:
  it = iter(loader)
  next(it)  # first batch pays for opening files and starting threads
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * per_batch / (time.perf_counter() - start)


def main(argv):
  del argv
  print('prepared:', {k: str(v) for k, v in data.prepare_embedded(_DATA_DIR.value).items()})
  stats = data.corpus_stats(_DATASET.value, _DATA_DIR.value, _TOKENIZER.value)
  print(f'{_DATASET.value}: | split | documents | bytes | tokens | unigram entropy (nats) |')
  for split, s in stats.items():
    print(f'| {split} | {s["documents"]} | {s["bytes"]} | {s["tokens"]} | '
          f'{s["unigram_entropy_nats"]:.4f} |')
  if _BATCHES.value:
    lm = data.lm_loader(_DATASET.value, seq_len=128, batch_size=32, data_dir=_DATA_DIR.value,
                        tokenizer=_TOKENIZER.value, shard_index=0, shard_count=1)
    print(f'lm_loader seq_len=128 batch=32: {_throughput(lm, _BATCHES.value, 32 * 128):,.0f} '
          'tokens/s')
  if _IMAGES.value:
    info = data.dataset_info(_IMAGES.value, _DATA_DIR.value)
    print(json.dumps({k: info[k] for k in ('name', 'num_classes', 'image_shape', 'num_examples',
                                          'mean', 'std')}))
    if _BATCHES.value:
      for train in (True, False):
        images = data.image_loader(_IMAGES.value, batch_size=64, train=train,
                                   data_dir=_DATA_DIR.value, shard_index=0, shard_count=1)
        print(f'image_loader train={train} batch=64: '
              f'{_throughput(images, _BATCHES.value, 64):,.0f} images/s')


if __name__ == '__main__':
  app.run(main)
