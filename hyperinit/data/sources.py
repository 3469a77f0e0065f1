"""How datasets are opened: a read-only tfds builder and its random-access splits.

Every dataset (embedded or real) is read the same way: find its prepared version directory
(`layout.find_prepared`), open it with `tfds.builder_from_directory(...)` (no builder code, no
TensorFlow, no network) and take `builder.as_data_source(split)`, a random-access source that
grain reads.  Embedded datasets are prepared on first use (`embedded.ensure_prepared`).
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from hyperinit.data import embedded
from hyperinit.data.layout import (EMBEDDED, DatasetNotFoundError, find_prepared,
                                   missing_message, resolve_data_dir, split_name)


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
      embedded.ensure_prepared(base, root)
    path = find_prepared(path_like, root)
    if path is None:
      raise DatasetNotFoundError(missing_message(path_like, root))
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
