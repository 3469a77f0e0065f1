"""Data pipelines: tfds array_record data sources fed through grain, sharded per process.

    from hyperinit import data
    train = data.lm_loader('pydoc_text', 'train', seq_len=128, batch_size=32, seed=0)
    it = iter(train)                   # checkpointable: it.get_state() / it.set_state(state)
    batch = next(it)                   # {'inputs': int32 [32, 128], 'targets': int32 [32, 128]}
    images = data.image_loader('digits', 'train', batch_size=64, train=True)
    # {'image': float32 [64, 8, 8, 1] normalised, 'label': int32 [64]}
    info = data.dataset_info('digits')   # num_classes, image_shape, splits, num_examples, ...
    data.unigram_entropy('pydoc_text')   # nats/token: the bar a language model must beat

Embedded datasets `pydoc_text` (English help text shipped with Python) and `digits` (UCI
handwritten digits, 8x8) need no download: they are built into the tfds data dir on first use.
Real tfds datasets (lm1b, wiki40b/en, cifar10, imagenet2012, ...) are read when prepared there
in the array_record format.  No TensorFlow is needed anywhere.  See docs/data.md.
"""

from hyperinit.data.embedded import ensure_prepared, prepare_embedded
from hyperinit.data.images import NORM_STATS, image_loader
from hyperinit.data.info import DatasetInfo, dataset_info
from hyperinit.data.layout import EMBEDDED, DatasetNotFoundError, find_prepared, resolve_data_dir
from hyperinit.data.sources import open_builder
from hyperinit.data.text import corpus_stats, lm_loader, token_counts, unigram_entropy
from hyperinit.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, get_tokenizer

__all__ = ['ByteTokenizer', 'DatasetInfo', 'DatasetNotFoundError', 'EMBEDDED', 'HFTokenizer',
           'NORM_STATS', 'Tokenizer', 'corpus_stats', 'dataset_info', 'ensure_prepared',
           'find_prepared', 'get_tokenizer', 'image_loader', 'lm_loader', 'open_builder',
           'prepare_embedded', 'resolve_data_dir', 'token_counts', 'unigram_entropy']
