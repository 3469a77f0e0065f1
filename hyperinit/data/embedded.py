"""Embedded datasets that need no download, built locally into the tfds data dir as tfds datasets.

* `pydoc_text`: the English help text that ships with Python (`pydoc_data.topics`, what `help()`
  shows for keywords and topics), one document per section, deduplicated. 1 document in 10 (by a
  hash of its text) is in `validation`, the rest in `train`.  Features: `id`, `text`.
* `digits`: the UCI optical-recognition handwritten digits (Alpaydin & Kaynak 1998, CC BY 4.0):
  1797 grayscale 8x8 images, 10 classes; a byte-identical copy of scikit-learn's bundled
  `digits.csv.gz` ships in this package (so scikit-learn is not needed).  Pixel counts 0..16 are
  stored as round(v * 255 / 16) (lossless).  Every 5th example (index % 5 == 0) is in `validation`
  (360), the rest in `train` (1437).  Features: `image` uint8 [8, 8, 1] (PNG), `label`.

They are real tfds `GeneratorBasedBuilder`s: tfds 4.9.10 builds them into array_record without
TensorFlow (its PNG encoder needs TensorFlow, so the images are PNG-encoded with Pillow first).
Preparation happens once, under a file lock, into a temporary dir that tfds renames into place.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.resources
import io
import os
import re
import sys
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from hyperinit.data import layout

try:
  import fcntl  # POSIX only; elsewhere two processes must not prepare at the same time.
except ImportError:  # pragma: no cover
  fcntl = None

VALIDATION_EVERY = 10  # pydoc_text: documents whose text hash % 10 == 0 are validation
DIGITS_VALIDATION_EVERY = 5  # digits: index % 5 == 0 is validation
DIGITS_FILE = 'digits.csv.gz'
DIGITS_SHA256 = '09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22'

# A heading line followed by an underline of one repeated character of the same length.
_UNDERLINE = re.compile(r'([*=\-~^"])\1*')


def _is_heading(lines: list[str], i: int) -> bool:
  return (i + 1 < len(lines) and bool(lines[i].strip()) and len(lines[i + 1]) == len(lines[i])
          and _UNDERLINE.fullmatch(lines[i + 1]) is not None)


def pydoc_documents() -> list[tuple[str, str]]:
  """(id, text) of every section of `pydoc_data.topics`, deduplicated, in topic order.

  A section runs from one underlined heading to the next; a section that is only a heading is
  merged into the one after it.  Ids are '<topic>/<section index>'.
  """
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  docs, seen = [], set()
  for key in sorted(topics.topics):
    lines = topics.topics[key].split('\n')
    starts = sorted({0} | {i for i in range(len(lines)) if _is_heading(lines, i)})
    sections = ['\n'.join(lines[a:b]).strip() for a, b in zip(starts, starts[1:] + [len(lines)])]
    pending, count = '', 0
    for section in sections:
      text = (pending + '\n\n' + section).strip() if pending else section
      body = text.split('\n')
      if len(body) <= 2 and _is_heading(body, 0):  # heading only: prepend to the next section
        pending = text
        continue
      pending = ''
      if text and text not in seen:
        seen.add(text)
        docs.append((f'{key}/{count}', text + '\n'))
        count += 1
    if pending and pending not in seen:
      seen.add(pending)
      docs.append((f'{key}/tail', pending + '\n'))
  return docs


def is_validation_text(text: str) -> bool:
  return int(hashlib.sha256(text.encode('utf-8')).hexdigest(), 16) % VALIDATION_EVERY == 0


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base for builders that generate their data locally (no download), e.g. the embedded ones.

  Subclass it like `tfds.core.GeneratorBasedBuilder` (yield PNG bytes or PIL images for Image
  features: tfds encodes numpy images with TensorFlow) and call
  `Builder(data_dir=..., file_format='array_record').download_and_prepare()`.
  """

  # tfds looks for a checksums file next to the builder's code, and for a package outside
  # tensorflow_datasets that lookup needs the `importlib_resources` backport (not installed with
  # tfds 4.9.10).  Nothing is downloaded here, so there is no checksums file to find.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None


class PydocText(LocalBuilder):
  """English help text shipped with Python (pydoc_data.topics), one document per section."""
  name = 'pydoc_text'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Sections of pydoc_data.topics; 1 in 10 (by text hash) in validation.'}

  def _info(self) -> tfds.core.DatasetInfo:
    docs = pydoc_documents()
    digest = hashlib.sha256('\0'.join(t for _, t in docs).encode('utf-8')).hexdigest()
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Sections of the English help text that ships with Python '
                     f'(pydoc_data.topics, Python {sys.version.split()[0]}, {len(docs)} documents, '
                     f'sha256 {digest[:16]}). Built by hyperinit.data, no download.'),
        features=tfds.features.FeaturesDict({'id': tfds.features.Text(),
                                             'text': tfds.features.Text()}),
        homepage='https://docs.python.org/3/library/pydoc.html',
        license='Python Software Foundation License (PSF-2.0)',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    docs = pydoc_documents()
    return {'train': self._generate_examples([d for d in docs if not is_validation_text(d[1])]),
            'validation': self._generate_examples([d for d in docs if is_validation_text(d[1])])}

  def _generate_examples(self, docs):
    for doc_id, text in docs:
      yield doc_id, {'id': doc_id, 'text': text}


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """The bundled digits: images uint8 [1797, 8, 8] with values 0..16, labels int64 [1797]."""
  raw = importlib.resources.files('hyperinit.data').joinpath(DIGITS_FILE).read_bytes()
  if hashlib.sha256(raw).hexdigest() != DIGITS_SHA256:
    raise ValueError(f'hyperinit/data/{DIGITS_FILE} is corrupt: sha256 mismatch '
                     f'(expected {DIGITS_SHA256})')
  table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode('ascii')), delimiter=',',
                     dtype=np.int64)
  if table.shape != (1797, 65) or table[:, :64].min() < 0 or table[:, :64].max() > 16:
    raise ValueError(f'hyperinit/data/{DIGITS_FILE}: expected 1797 rows of 64 pixels in 0..16 and '
                     f'a label, got shape {table.shape}')
  return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64]


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top  (pillow comes with matplotlib)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  return buf.getvalue()


class Digits(LocalBuilder):
  """UCI handwritten digits, 8x8 grayscale, 10 classes (scikit-learn's load_digits data)."""
  name = 'digits'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'digits.csv.gz of scikit-learn 1.9.1; every 5th example in validation.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Optical recognition of handwritten digits (UCI, Alpaydin & Kaynak 1998): '
                     '8x8 counts of on pixels in 4x4 blocks of 32x32 bitmaps, values 0..16 stored '
                     'as round(v * 255 / 16). Copy of scikit-learn\'s bundled digits.csv.gz.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
        license='CC BY 4.0',
        citation=('@misc{alpaydin1998digits, author={Alpaydin, E. and Kaynak, C.}, title={Optical '
                  'Recognition of Handwritten Digits}, year={1998}, howpublished={UCI Machine '
                  'Learning Repository}, doi={10.24432/C50P49}}'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    index = np.arange(1797)
    return {'train': self._generate_examples(index[index % DIGITS_VALIDATION_EVERY != 0]),
            'validation': self._generate_examples(index[index % DIGITS_VALIDATION_EVERY == 0])}

  def _generate_examples(self, indices):
    images, labels = digits_arrays()
    scaled = np.round(images.astype(np.float64) * 255 / 16).astype(np.uint8)
    for i in indices:
      yield int(i), {'image': _png(scaled[i]), 'label': int(labels[i])}


BUILDERS = {'pydoc_text': PydocText, 'digits': Digits}


@contextlib.contextmanager
def _prepare_lock(data_dir: epath.Path):
  """An exclusive lock on <data_dir>/.hyperinit_prepare.lock (local dirs; no-op elsewhere)."""
  local = '://' not in os.fspath(data_dir)
  if not local or fcntl is None:
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, '.hyperinit_prepare.lock'), 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def ensure_prepared(name: str, data_dir: str | os.PathLike | None = None) -> epath.Path:
  """Prepares embedded dataset `name` unless already there; returns its version dir.

  Safe when several processes race: the build runs under a file lock and re-checks first, and
  tfds writes into `incomplete.*` and renames, so a reader never sees a half-written dataset.
  """
  if name not in BUILDERS:
    raise ValueError(f'{name!r} is not an embedded dataset; embedded: {sorted(BUILDERS)}')
  data_dir = layout.resolve_data_dir(data_dir)
  full = f'{name}:{BUILDERS[name].VERSION}'
  path = layout.find_prepared(full, data_dir)
  if path is not None:
    return path
  with _prepare_lock(data_dir):
    path = layout.find_prepared(full, data_dir)  # another process may have finished meanwhile
    if path is None:
      builder = BUILDERS[name](data_dir=os.fspath(data_dir), file_format='array_record')
      with tempfile.TemporaryDirectory(prefix='hyperinit_dl_') as download_dir:
        try:
          builder.download_and_prepare(download_dir=download_dir)
        except FileExistsError:
          # Where no lock works (a remote dir), the loser of a race fails its final rename;
          # the winner's dataset is identical, so use it.
          if layout.find_prepared(full, data_dir) is None:
            raise
      path = layout.find_prepared(full, data_dir)
      if path is None:
        raise RuntimeError(f'preparing {name!r} in {os.fspath(data_dir)!r} left no '
                           'dataset_info.json')
  return path


def prepare_embedded(data_dir: str | os.PathLike | None = None,
                     names: tuple[str, ...] | list[str] | None = None) -> dict[str, epath.Path]:
  """Prepares the embedded datasets (all, or `names`) once; idempotent and atomic.

  Returns:
    {name: prepared version dir}, e.g. {'pydoc_text': <data_dir>/pydoc_text/1.0.0, ...}.
  """
  return {n: ensure_prepared(n, data_dir) for n in (names or tuple(BUILDERS))}
