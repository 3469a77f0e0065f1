"""Where datasets live and how they are opened: the tfds data dir, prepared versions, clear errors.

Every dataset (embedded or real) is read the same way: find its prepared version directory
`<data_dir>/<name>[/<config>]/<version>/` (dataset_info.json + features.json + array_record
shards), open it with `tfds.builder_from_directory(...)` (no builder code, no TensorFlow, no
network) and take `builder.as_data_source(split)`, a random-access source that grain reads.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

EMBEDDED = ('pydoc_text', 'digits')

# How to get a real dataset into a data dir, beyond the generic `tfds build` line.
_PREPARE_NOTES = {
    'imagenet2012': 'imagenet2012 needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
                    'placed by hand in <data_dir>/downloads/manual/ before `tfds build`.',
    'wiki40b': 'wiki40b is built with Apache Beam: pip install apache-beam, then add '
               '--beam_pipeline_options="runner=DirectRunner" (or a Dataflow runner) to '
               '`tfds build`.',
    'c4': 'c4 is built with Apache Beam from Common Crawl (very large); copy a prepared '
          'directory instead.',
}


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not prepared in the data dir (the message says how to prepare it)."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> epath.Path:
  """`data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (the tfds default)."""
  if data_dir is None or data_dir == '':
    data_dir = os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  data_dir = os.fspath(data_dir)
  if '://' not in data_dir:
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  return epath.Path(data_dir)


def split_name(name: str) -> tuple[str, str | None]:
  """'wiki40b/en:1.3.0' -> ('wiki40b/en', '1.3.0'); 'cifar10' -> ('cifar10', None)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f'dataset name must be a non-empty string, got {name!r}')
  base, _, version = name.partition(':')
  if version and not tfds.core.Version.is_valid(version):
    raise ValueError(f'dataset {name!r}: {version!r} is not a version like 1.0.0')
  return base.strip('/'), (version or None)


def _versions(root: epath.Path) -> list[tfds.core.Version]:
  if not root.is_dir():
    return []
  found = []
  for child in root.iterdir():
    # Skips tfds's `incomplete.XXXX_1.0.0` dirs of interrupted builds and anything half written.
    if tfds.core.Version.is_valid(child.name) and (child / 'dataset_info.json').exists():
      found.append(tfds.core.Version(child.name))
  return sorted(found)


def find_prepared(name: str, data_dir: str | os.PathLike | None = None) -> epath.Path | None:
  """The prepared version dir of `name` (the requested version, else the newest), or None."""
  base, version = split_name(name)
  root = resolve_data_dir(data_dir) / base
  versions = _versions(root)
  if version is not None:
    return root / version if tfds.core.Version(version) in versions else None
  return root / str(versions[-1]) if versions else None


def _missing_message(name: str, data_dir: epath.Path) -> str:
  base, version = split_name(name)
  where = data_dir / base / (version or '<version>')
  present = sorted(p.name for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
  lines = [
      f'dataset {name!r} is not prepared in the tfds data dir {os.fspath(data_dir)!r} '
      f'(looked for {os.fspath(where)}/dataset_info.json).',
      'hyperinit reads datasets with tfds.data_source, which needs the array_record file format '
      '(and no TensorFlow). To prepare it:',
      f'  - on a machine with TensorFlow: pip install tensorflow tensorflow-datasets && '
      f'tfds build {base} --file_format=array_record --data_dir={os.fspath(data_dir)}',
      f'  - or copy an already prepared {base}/<version>/ directory (array_record shards, '
      'dataset_info.json, features.json) into the data dir.',
  ]
  note = _PREPARE_NOTES.get(base.split('/')[0])
  if note:
    lines.append(f'  note: {note}')
  lines.append('Pick the data dir with data_dir=... or $TFDS_DATA_DIR. Embedded datasets that '
               f'need no download: {", ".join(EMBEDDED)}. Present in this data dir: '
               f'{present or "nothing"}.')
  return '\n'.join(lines)


def open_builder(name: str | os.PathLike, data_dir: str | os.PathLike | None = None):
  """A read-only tfds builder for a prepared dataset (embedded ones are prepared on first use).

  Args:
    name: a tfds name ('cifar10', 'wiki40b/en', 'lm1b:1.1.0', 'pydoc_text'), or the path of a
      prepared version directory (one that holds dataset_info.json).
    data_dir: the tfds data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.

  Raises:
    DatasetNotFoundError: not prepared; the message names the dir looked in and how to prepare it.
    ValueError: prepared, but in a file format without random access (e.g. tfrecord).
  """
  path_like = os.fspath(name)
  is_path = '/' in path_like or os.sep in path_like
  if is_path and epath.Path(path_like, 'dataset_info.json').exists():
    path = epath.Path(path_like)
  else:
    root = resolve_data_dir(data_dir)
    base, _ = split_name(path_like)
    if base in EMBEDDED:
      from hyperinit.data import embedded  # pylint: disable=g-import-not-at-top  (cycle)
      embedded.ensure_prepared(base, root)
    path = find_prepared(path_like, root)
    if path is None:
      raise DatasetNotFoundError(_missing_message(path_like, root))
  builder = tfds.builder_from_directory(os.fspath(path))
  usable = builder.info.available_file_formats() & tfds.core.FileFormat.with_random_access()
  if not usable:
    formats = sorted(f.value for f in builder.info.available_file_formats())
    raise ValueError(
        f'dataset {path_like!r} at {os.fspath(path)!r} is stored as {formats}; hyperinit reads '
        'array_record (tfds.data_source, no TensorFlow). On a machine with TensorFlow convert it: '
        f'tfds convert_format --dataset_version_dir={os.fspath(path)} '
        '--out_file_format=array_record or rebuild it: '
        f'tfds build {builder.info.full_name.rsplit("/", 1)[0]} --file_format=array_record')
  return builder


def open_split(builder, split: str):
  """`builder.as_data_source(split)`; `split` may use tfds slicing ('train[:90%]')."""
  base = split.split('[')[0].split('+')[0].strip()
  if base not in builder.info.splits:
    raise ValueError(f'dataset {builder.info.full_name!r} has no split {base!r}; its splits are '
                     f'{sorted(builder.info.splits)}')
  return builder.as_data_source(split=split)


def dataset_base_name(builder) -> str:
  """'wiki40b' for wiki40b/en/1.3.0: the key of per-dataset tables."""
  return builder.info.name


def features_of_type(builder, kind: type) -> list[str]:
  """Top-level feature names whose feature is an instance of `kind` (e.g. tfds.features.Text)."""
  return [k for k, f in builder.info.features.items() if isinstance(f, kind)]


def pick_feature(builder, kind: type, preferred: tuple[str, ...], override: str | None,
                 what: str) -> str:
  """The feature to read: `override`, else the first of `preferred` present, else the only one."""
  features: dict[str, Any] = dict(builder.info.features.items())
  if override is not None:
    if override not in features:
      raise ValueError(f'dataset {builder.info.full_name!r} has no feature {override!r} ({what}); '
                       f'features: {sorted(features)}')
    return override
  candidates = features_of_type(builder, kind)
  for name in preferred:
    if name in candidates:
      return name
  if len(candidates) == 1:
    return candidates[0]
  raise ValueError(f'cannot tell which feature of {builder.info.full_name!r} is the {what}: '
                   f'candidates {candidates} among {sorted(features)}; pass it explicitly')
