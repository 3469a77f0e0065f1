"""Data pipelines: embedded tfds datasets, packing, sharding, determinism, checkpointable state."""

import collections
import gzip
import json
import math
import os
import shutil
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hyperinit import data
from hyperinit.data import embedded, text


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A tfds data dir with the embedded datasets, so tests never touch ~/tensorflow_datasets."""
  d = str(tmp_path_factory.mktemp('tfds_data'))
  data.prepare_embedded(d)
  return d


def _take(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


def _same(a, b):
  return len(a) == len(b) and all(
      a_.keys() == b_.keys() and all(np.array_equal(a_[k], b_[k]) for k in a_)
      for a_, b_ in zip(a, b))


def _reference_stream(data_dir, split):
  """Independent reference: the split's texts in stored order, as UTF-8 bytes + 0xFF each."""
  source = tfds.data_source('pydoc_text', split=split, data_dir=data_dir, download=False)
  return b''.join(bytes(source[i]['text']) + b'\xff' for i in range(len(source)))


# ---- preparation -----------------------------------------------------------------------------

def test_prepare_is_idempotent_and_a_real_tfds_dataset(data_dir):
  paths = data.prepare_embedded(data_dir)
  stamps = {n: os.path.getmtime(os.path.join(paths[n], 'dataset_info.json')) for n in paths}
  again = data.prepare_embedded(data_dir)
  assert again == paths
  assert stamps == {n: os.path.getmtime(os.path.join(paths[n], 'dataset_info.json')) for n in paths}
  assert sorted(os.listdir(os.path.join(data_dir, 'digits'))) == ['1.0.0']
  # Plain tfds reads them with no hyperinit code involved.
  builder = tfds.builder_from_directory(os.fspath(paths['digits']))
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      'train': 1437, 'validation': 360}
  text_source = tfds.data_source('pydoc_text', split='validation', data_dir=data_dir,
                                 download=False)
  assert len(text_source) > 10 and isinstance(text_source[0]['text'], bytes)


def test_prepare_races_safely(tmp_path):
  barrier, results, errors = threading.Barrier(3), [], []

  def prepare():
    barrier.wait()
    try:
      results.append(data.prepare_embedded(tmp_path, names=['digits'])['digits'])
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=prepare) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and len(set(results)) == 1
  assert sorted(os.listdir(tmp_path / 'digits')) == ['1.0.0']  # no incomplete.* leftovers
  assert data.dataset_info('digits', tmp_path).num_examples == {'train': 1437, 'validation': 360}


def test_default_data_dir_is_tfds_data_dir(data_dir, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', data_dir)
  assert os.fspath(data.resolve_data_dir()) == data_dir
  assert data.dataset_info('digits').path == os.path.join(data_dir, 'digits', '1.0.0')
  monkeypatch.delenv('TFDS_DATA_DIR')
  assert os.fspath(data.resolve_data_dir()) == os.path.expanduser('~/tensorflow_datasets')


def test_dataset_info(data_dir):
  info = data.dataset_info('pydoc_text', data_dir)
  assert (info.kind, info.vocab_size, info.eos_id, info['vocab_size']) == ('text', 256, 255, 256)
  assert info.splits == ('train', 'validation') and info.eval_split == 'validation'
  assert info.num_examples['train'] > 5 * info.num_examples['validation'] > 0
  img = data.dataset_info('digits', data_dir)
  assert (img.kind, img.num_classes, img.image_shape) == ('image', 10, (8, 8, 1))


# ---- language model --------------------------------------------------------------------------

def test_lm_shapes_dtypes_and_shifted_targets(data_dir):
  b = _take(data.lm_loader('pydoc_text', seq_len=64, batch_size=8, data_dir=data_dir,
                           shard_index=0, shard_count=1), 2)[1]
  assert set(b) == {'inputs', 'targets'}
  for k in b:
    assert b[k].shape == (8, 64) and b[k].dtype == np.int32
  np.testing.assert_array_equal(b['targets'][:, :-1], b['inputs'][:, 1:])
  assert b['inputs'].min() >= 0 and b['inputs'].max() <= 255


def test_packing_has_no_padding(data_dir):
  seq_len, batch = 100, 4
  loader = data.lm_loader('pydoc_text', 'validation', seq_len=seq_len, batch_size=batch, seed=0,
                          data_dir=data_dir, num_epochs=1, shuffle=False, shard_index=0,
                          shard_count=1)
  chunks = [np.concatenate([b['inputs'], b['targets'][:, -1:]], axis=1) for b in loader]
  got = np.concatenate(chunks).astype(np.uint8)
  stream = np.frombuffer(_reference_stream(data_dir, 'validation'), np.uint8)
  n_chunks = len(stream) // (seq_len + 1) // batch * batch
  assert got.shape == (n_chunks, seq_len + 1)
  np.testing.assert_array_equal(got.reshape(-1), stream[:got.size])  # the stream, nothing added


def test_rows_shards_are_disjoint_and_rebuild_the_global_batch(data_dir):
  kw = dict(seq_len=32, batch_size=8, seed=3, data_dir=data_dir, num_epochs=1)
  whole = _take(data.lm_loader(shard_index=0, shard_count=1, **kw), 3)
  parts = [_take(data.lm_loader(shard_index=i, shard_count=2, **kw), 3) for i in range(2)]
  for t in range(3):
    assert parts[0][t]['inputs'].shape == (4, 32)
    np.testing.assert_array_equal(
        np.concatenate([parts[0][t]['inputs'], parts[1][t]['inputs']]), whole[t]['inputs'])
  assert not np.array_equal(parts[0][0]['inputs'], parts[1][0]['inputs'])
  # Both shards of an eval pass yield the same number of batches (no multi-host hang).
  counts = [sum(1 for _ in data.lm_loader(shard_index=i, shard_count=2, **kw)) for i in range(2)]
  assert counts[0] == counts[1] > 0


def test_docs_shards_hold_different_documents(data_dir):
  def documents(i):
    loader = data.lm_loader(seq_len=256, batch_size=2, data_dir=data_dir, num_epochs=1,
                            shuffle=False, shard_index=i, shard_count=2, shard_mode='docs')
    stream = b''.join(np.concatenate([b['inputs'], b['targets'][:, -1:]], 1).astype(np.uint8)
                      .tobytes() for b in loader)
    return set(stream.split(b'\xff')[1:-1])  # documents seen whole
  a, b = documents(0), documents(1)
  assert len(a) > 20 and len(b) > 20 and not a & b


def test_determinism_per_seed(data_dir):
  kw = dict(seq_len=32, batch_size=4, data_dir=data_dir, shard_index=0, shard_count=1)
  first = _take(data.lm_loader(seed=1, **kw), 3)
  assert _same(first, _take(data.lm_loader(seed=1, **kw), 3))
  assert not _same(first, _take(data.lm_loader(seed=2, **kw), 3))


def test_lm_state_save_restore(data_dir):
  loader = data.lm_loader(seq_len=48, batch_size=4, seed=5, data_dir=data_dir, shard_index=0,
                          shard_count=1)
  it = iter(loader)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
  expected = [next(it) for _ in range(4)]
  it2 = iter(loader)
  it2.set_state(state)
  assert _same(expected, [next(it2) for _ in range(4)])
  # Rows sharding: the state restores onto another process count, giving that shard's rows.
  it3 = iter(data.lm_loader(seq_len=48, batch_size=4, seed=5, data_dir=data_dir, shard_index=1,
                            shard_count=2))
  it3.set_state(state)
  np.testing.assert_array_equal(next(it3)['inputs'], expected[0]['inputs'][2:])


def test_default_shard_comes_from_jax(data_dir):
  import jax  # pylint: disable=g-import-not-at-top
  b = _take(data.lm_loader(seq_len=16, batch_size=4, data_dir=data_dir), 1)[0]
  assert b['inputs'].shape == (4 // jax.process_count(), 16)


def test_byte_tokenizer_round_trip():
  tok = data.ByteTokenizer()
  for s in ['', 'plain ascii', 'naïve café — 東京 🚀', 'nul\x00inside', 'x' * 1000]:
    ids = tok.encode(s)
    assert ids.dtype == np.int32 and (ids < 255).all()  # 0xFF never occurs in UTF-8
    assert tok.decode(ids) == s
    np.testing.assert_array_equal(ids, np.frombuffer(s.encode('utf-8'), np.uint8))
  joined = np.concatenate([tok.encode('a b'), [255], tok.encode('ü'), [255]])
  assert tok.decode_documents(joined) == ['a b', 'ü']
  with pytest.raises(ValueError, match='0, 255'):
    tok.decode([256])


def test_hf_tokenizer_file(data_dir, tmp_path):
  tokenizers = pytest.importorskip('tokenizers')
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  texts = [bytes(x['text']).decode() for x in tfds.data_source(
      'pydoc_text', split='validation', data_dir=data_dir, download=False)]
  tok.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<unk>', '<|endoftext|>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  path = str(tmp_path / 'tokenizer.json')
  tok.save(path)
  info = data.dataset_info('pydoc_text', data_dir, tokenizer=path)
  assert info.vocab_size == tok.get_vocab_size() and info.eos_id == tok.token_to_id('<|endoftext|>')
  b = _take(data.lm_loader(seq_len=64, batch_size=4, data_dir=data_dir, tokenizer=path,
                           split='validation', shard_index=0, shard_count=1, shuffle=False,
                           num_epochs=1), 1)[0]
  # Reference: the tokenizers library's own ids of each document + EOS, packed in stored order.
  stream = np.concatenate([np.r_[tok.encode(t).ids, info.eos_id] for t in texts[:40]])
  rows = stream[:4 * 65].reshape(4, 65)
  assert (rows == info.eos_id).sum() >= 1          # the batch crosses a document boundary
  np.testing.assert_array_equal(b['inputs'], rows[:, :-1])
  np.testing.assert_array_equal(b['targets'], rows[:, 1:])
  assert b['inputs'].max() < info.vocab_size
  assert data.HFTokenizer(path).decode(data.HFTokenizer(path).encode(texts[0])) == texts[0]
  with pytest.raises(ValueError, match='separator'):
    data.HFTokenizer(path, eos_token='<nope>')


def test_unigram_entropy_matches_a_direct_count(data_dir):
  counts = collections.Counter(_reference_stream(data_dir, 'train'))
  total = sum(counts.values())
  expected = -sum(c / total * math.log(c / total) for c in counts.values())
  got = data.unigram_entropy('pydoc_text', 'train', data_dir)
  assert got == pytest.approx(expected, rel=1e-9)
  assert 2.0 < got < math.log(256)


def test_wiki40b_markers_are_cleaned():
  raw = b'_START_ARTICLE_\nTitle\n_START_PARAGRAPH_\nOne._NEWLINE_Two.'
  assert text.TEXT_CLEANERS['wiki40b'](raw) == b'Title\nOne.\nTwo.'


# ---- images ----------------------------------------------------------------------------------

def _digits_csv():
  path = os.path.join(os.path.dirname(embedded.__file__), embedded.DIGITS_FILE)
  table = np.loadtxt(gzip.open(path, 'rt'), delimiter=',')
  return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(int)


def test_image_normalisation_stats(data_dir):
  pixels, labels = _digits_csv()
  train = np.arange(len(labels)) % 5 != 0
  scaled = np.round(pixels[train] * 255 / 16) / 255  # independent of tfds, PNG and grain
  info = data.dataset_info('digits', data_dir)
  assert info.mean[0] == pytest.approx(scaled.mean(), abs=1e-9)
  assert info.std[0] == pytest.approx(scaled.std(), abs=1e-9)
  batches = list(data.image_loader('digits', 'train', batch_size=500, train=False, num_epochs=1,
                                   data_dir=data_dir, shard_index=0, shard_count=1,
                                   pad_final_batch=True))
  assert len(batches) == 3 and batches[-1]['mask'].sum() == 1437 - 1000
  mask = np.concatenate([b['mask'] for b in batches]) > 0
  x = np.concatenate([b['image'] for b in batches])[mask]
  assert x.shape == (1437, 8, 8, 1) and x.dtype == np.float32
  assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-5
  y = np.concatenate([b['label'] for b in batches])[mask]
  np.testing.assert_array_equal(np.bincount(y), np.bincount(labels[train]))


def test_digits_augmentation_is_a_small_shift_without_flip(data_dir):
  kw = dict(batch_size=32, data_dir=data_dir, shuffle=False, shard_index=0, shard_count=1)
  plain = _take(data.image_loader(augment=False, **kw), 1)[0]['image']
  aug = _take(data.image_loader(augment=True, seed=7, **kw), 1)[0]['image']
  assert aug.shape == plain.shape == (32, 8, 8, 1)
  background = plain.min()  # normalised zero pixel, what the shift brings in
  shifted = 0
  for a, p in zip(aug, plain):
    padded = np.pad(p, ((1, 1), (1, 1), (0, 0)), constant_values=background)
    shifts = [(dy, dx) for dy in range(3) for dx in range(3)
              if np.allclose(padded[dy:dy + 8, dx:dx + 8], a, atol=1e-6)]
    assert shifts, 'augmented digit is not a shift of at most 1 px of the original'
    shifted += (1, 1) not in shifts
  assert shifted > 10


def test_image_loader_shapes_resize_and_shards(data_dir):
  kw = dict(batch_size=16, seed=4, data_dir=data_dir, image_size=16)
  whole = _take(data.image_loader(shard_index=0, shard_count=1, **kw), 2)
  halves = [_take(data.image_loader(shard_index=i, shard_count=2, **kw), 2) for i in range(2)]
  for t in range(2):
    assert whole[t]['image'].shape == (16, 16, 16, 1) and whole[t]['label'].dtype == np.int32
    for k in ('image', 'label'):  # augmentation too is the same whatever the process count
      np.testing.assert_array_equal(np.concatenate([halves[0][t][k], halves[1][t][k]]),
                                    whole[t][k])


def test_image_state_restore_and_per_epoch_reshuffle(data_dir):
  loader = data.image_loader('digits', 'validation', batch_size=360, seed=0, num_epochs=2,
                             augment=False, data_dir=data_dir, shard_index=0, shard_count=1)
  epochs = list(loader)
  assert len(epochs) == 2
  assert not np.array_equal(epochs[0]['label'], epochs[1]['label'])
  np.testing.assert_array_equal(np.sort(epochs[0]['label']), np.sort(epochs[1]['label']))
  train = data.image_loader(batch_size=8, seed=1, data_dir=data_dir, shard_index=0, shard_count=1)
  it = iter(train)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(3)]
  it2 = iter(train)
  it2.set_state(state)
  assert _same(expected, [next(it2) for _ in range(3)])
  it3 = iter(data.image_loader(batch_size=8, seed=1, data_dir=data_dir, shard_index=0,
                               shard_count=2))
  it3.set_state(state)  # the same step on another process count: that shard's rows
  np.testing.assert_array_equal(next(it3)['image'], expected[0]['image'][:4])


# ---- real tfds datasets ----------------------------------------------------------------------

class _FakeCifar10(embedded.LocalBuilder, skip_registration=True):
  """Stands in for tfds's cifar10: same name, version, features; 12 random images."""
  name = 'cifar10'
  VERSION = tfds.core.Version('3.0.2')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'id': tfds.features.Text(), 'image': tfds.features.Image(shape=(32, 32, 3)),
        'label': tfds.features.ClassLabel(num_classes=10)}), supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(12), 'test': self._generate_examples(4)}

  def _generate_examples(self, n):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(n)
    for i in range(n):
      img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
      yield i, {'id': f'{i}', 'image': img, 'label': i % 10}


class _FakeLm1b(embedded.LocalBuilder, skip_registration=True):
  name = 'lm1b'
  VERSION = tfds.core.Version('1.1.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(50), 'test': self._generate_examples(5)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'text': f'Sentence number {i} of a fake billion words.'}


class _FakeImagenet(embedded.LocalBuilder, skip_registration=True):
  """Variable-size JPEG images like imagenet2012."""
  name = 'imagenet2012'
  VERSION = tfds.core.Version('5.1.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(num_classes=1000)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(6), 'validation': self._generate_examples(2)}

  def _generate_examples(self, n):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for i in range(n):
      h, w = 20 + 7 * i, 40 - 3 * i
      yield i, {'image': Image.fromarray(np.full((h, w, 3), 20 * i, np.uint8)), 'label': i}


def test_real_dataset_names_read_when_prepared(tmp_path):
  for cls in (_FakeCifar10, _FakeLm1b, _FakeImagenet):
    cls(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  info = data.dataset_info('cifar10', tmp_path)
  assert (info.num_classes, info.image_shape, info.eval_split) == (10, (32, 32, 3), 'test')
  assert info.mean == data.NORM_STATS['cifar10'][0]  # the published statistics
  b = _take(data.image_loader('cifar10', batch_size=4, data_dir=tmp_path, shard_index=0,
                              shard_count=1), 1)[0]
  assert b['image'].shape == (4, 32, 32, 3) and b['label'].shape == (4,)
  info = data.dataset_info('imagenet2012', tmp_path)
  assert info.image_shape == (None, None, 3) and info.mean == data.NORM_STATS['imagenet2012'][0]
  for train in (True, False):
    b = _take(data.image_loader('imagenet2012', 'validation', batch_size=2, train=train,
                                data_dir=tmp_path, image_size=16, shard_index=0,
                                shard_count=1), 1)[0]
    assert b['image'].shape == (2, 16, 16, 3)
    # Constant images stay constant through crop and resize: (20 i / 255 - mean) / std.
    mean, std = np.array(info.mean), np.array(info.std)
    for img, label in zip(b['image'], b['label']):
      np.testing.assert_allclose(img, np.broadcast_to((20 * label / 255 - mean) / std, img.shape),
                                 atol=0.05)
  with pytest.raises(ValueError, match='image_size'):
    data.image_loader('imagenet2012', data_dir=tmp_path, shard_index=0, shard_count=1)
  lm = _take(data.lm_loader('lm1b', seq_len=16, batch_size=2, data_dir=tmp_path, shard_index=0,
                            shard_count=1), 1)[0]
  row = np.concatenate([lm['inputs'][0], lm['targets'][0, -1:]]).astype(np.uint8).tobytes()
  sentences = [f'Sentence number {i} of a fake billion words.'.encode() for i in range(50)]
  assert all(any(piece in s for s in sentences) for piece in row.split(b'\xff'))
  assert data.dataset_info('lm1b', tmp_path).num_examples == {'test': 5, 'train': 50}
  # Prepared in a format without random access: a clear error saying how to convert it.
  tf_dir = tmp_path / 'tfrec' / 'lm1b' / '1.1.0'
  shutil.copytree(tmp_path / 'lm1b' / '1.1.0', tf_dir)
  meta = json.loads((tf_dir / 'dataset_info.json').read_text())
  meta['fileFormat'] = 'tfrecord'
  (tf_dir / 'dataset_info.json').write_text(json.dumps(meta))
  with pytest.raises(ValueError, match='convert_format'):
    data.lm_loader('lm1b', data_dir=tmp_path / 'tfrec', shard_index=0, shard_count=1)


@pytest.mark.parametrize('name,loader', [('lm1b', data.lm_loader), ('cifar10', data.image_loader),
                                         ('imagenet2012', data.image_loader),
                                         ('wiki40b/en', data.lm_loader)])
def test_missing_real_dataset_says_how_to_prepare(tmp_path, name, loader):
  with pytest.raises(data.DatasetNotFoundError) as e:
    loader(name, data_dir=tmp_path, shard_index=0, shard_count=1)
  msg = str(e.value)
  assert str(tmp_path) in msg and f'tfds build {name} --file_format=array_record' in msg
  if name == 'imagenet2012':
    assert 'downloads/manual' in msg


def test_bad_arguments_raise_clear_errors(data_dir):
  with pytest.raises(ValueError, match='multiple of shard_count'):
    data.lm_loader(batch_size=6, data_dir=data_dir, shard_index=0, shard_count=4)
  with pytest.raises(ValueError, match="no split 'valid'"):
    data.lm_loader(split='valid', data_dir=data_dir, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match='shard_index'):
    data.image_loader(data_dir=data_dir, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match='num_epochs'):
    data.image_loader(data_dir=data_dir, num_epochs=0, shard_index=0, shard_count=1)
