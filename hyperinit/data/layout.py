"""Where datasets live: the tfds data dir, prepared version directories, the not-found message.

A prepared dataset is `<data_dir>/<name>[/<config>]/<version>/` (dataset_info.json +
features.json + array_record shards).  Both `sources` (which opens datasets) and `embedded`
(which prepares the embedded ones) build on this module, so neither imports the other's way.
"""

from __future__ import annotations

import os

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


def missing_message(name: str, data_dir: epath.Path) -> str:
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


