"""Checkpoint directory I/O: config.json, safetensors files and shards, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from hyperinit._io import atomic_dir  # re-exported: interop.atomic_dir
from hyperinit.interop.base import Family

CONFIG, WEIGHTS, INDEX = 'config.json', 'model.safetensors', 'model.safetensors.index.json'
# Files of a Hugging Face directory that do not depend on the weights' shapes: a widened
# model (same vocabulary) keeps them unchanged, so AutoTokenizer / pipelines still work.
COMPANION_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'added_tokens.json', 'vocab.json', 'vocab.txt', 'merges.txt',
                   'tokenizer.model', 'spiece.model', 'chat_template.jinja',
                   'chat_template.json', 'generation_config.json',
                   'preprocessor_config.json')
_UNITS = {'': 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12,
          'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40}


def read_config(path: str | os.PathLike) -> dict[str, Any]:
  """Parsed config.json of a checkpoint directory."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'Hugging Face checkpoint directory {path!r} does not exist')
  file = os.path.join(path, CONFIG)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'{file!r} is missing: not a Hugging Face checkpoint directory')
  try:
    with open(file) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{file!r} is not valid JSON: {e}') from e
  if not isinstance(d, dict):
    raise ValueError(f'{file!r} holds a {type(d).__name__}, expected a JSON object')
  return d


def companion_files(path: str | os.PathLike) -> list[str]:
  """The `COMPANION_FILES` present in Hugging Face directory `path` (full paths)."""
  path = os.fspath(path)
  return [os.path.join(path, f) for f in COMPANION_FILES if os.path.isfile(os.path.join(path, f))]


def _weight_files(path: str) -> dict[str, str]:
  """{tensor name: file} from the index, or for a single model.safetensors."""
  index = os.path.join(path, INDEX)
  if os.path.isfile(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)['weight_map']
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f'{index!r} is not a safetensors index (needs a "weight_map"): {e}') from e
    return {k: os.path.join(path, v) for k, v in weight_map.items()}
  single = os.path.join(path, WEIGHTS)
  if not os.path.isfile(single):
    found = sorted(f for f in os.listdir(path) if f.endswith(('.bin', '.pt', '.h5', '.msgpack')))
    raise FileNotFoundError(f'{path!r} has neither {WEIGHTS} nor {INDEX}'
                            + (f' (found {found}: only safetensors is supported)' if found else ''))
  with _open(single) as f:
    return {k: single for k in f.keys()}


@contextlib.contextmanager
def _open(file: str):
  if not os.path.isfile(file):
    raise FileNotFoundError(f'weights file {file!r} (listed in the index) is missing')
  try:
    with safe_open(file, framework='np') as f:
      yield f
  except SafetensorError as e:
    raise ValueError(f'{file!r} is not a readable safetensors file: {e}') from e


class Reader:
  """Lazy access to the tensors of a directory, under the family's canonical names."""

  def __init__(self, path: str, fam: Family):
    self._stack = contextlib.ExitStack()
    self.files: dict[str, Any] = {}
    self.source: dict[str, tuple[str, str]] = {}   # canonical name -> (file, stored name)
    for stored, file in _weight_files(path).items():
      name = stored
      for pattern, repl in fam.renames:
        name = re.sub(pattern, repl, name)
      if any(re.search(p, name) for p in fam.ignore):
        continue
      if name in self.source:
        raise ValueError(f'tensors {self.source[name][1]!r} and {stored!r} both map to {name!r}')
      self.source[name] = (file, stored)

  def _file(self, file):
    if file not in self.files:
      self.files[file] = self._stack.enter_context(_open(file))
    return self.files[file]

  def shape(self, name: str) -> tuple[int, ...]:
    file, stored = self.source[name]
    f = self._file(file)
    if stored not in f.keys():
      raise ValueError(f'tensor {stored!r} is listed in the index under {file!r} but is not '
                       'stored there')
    return tuple(f.get_slice(stored).get_shape())

  def get(self, name: str) -> np.ndarray:
    file, stored = self.source[name]
    return self._file(file).get_tensor(stored)

  def close(self):
    self._stack.close()


def parse_size(size: int | str) -> int:
  """Bytes for 5_000_000, '5GB' (10^9) or '5GiB' (2^30)."""
  if isinstance(size, (int, np.integer)):
    return int(size)
  m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*', str(size).upper())
  if not m:
    raise ValueError(f'max_shard_size={size!r}: expected bytes or a string like "5GB" / "500MiB"')
  return int(float(m.group(1)) * _UNITS[m.group(2) or ''])
