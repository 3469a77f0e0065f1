"""`dataset_info`: what a trainer needs to size a model and a run for a dataset."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorflow_datasets as tfds

from hyperinit.data import images, sources, text
from hyperinit.data import tokenizers as tokenizers_lib


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Facts about a prepared dataset; fields also read as `info['vocab_size']`.

  Attributes:
    name: the name asked for ('pydoc_text', 'wiki40b/en', ...).
    kind: 'text' or 'image'.
    path: the prepared version directory read.
    splits: split names, sorted.
    num_examples: {split: number of examples (documents or images)}.
    eval_split: 'validation' if present, else 'test' (else the first split).
    vocab_size, eos_id, tokenizer, text_key: text datasets (with the tokenizer asked for).
    num_classes, image_shape, label_names, image_key, label_key, mean, std: image datasets;
      image_shape is the stored (H, W, C) (None for a varying size); mean/std the normalisation.
  """
  name: str
  kind: str
  path: str
  splits: tuple[str, ...]
  num_examples: dict[str, int]
  eval_split: str
  vocab_size: int | None = None
  eos_id: int | None = None
  tokenizer: str | None = None
  text_key: str | None = None
  num_classes: int | None = None
  image_shape: tuple[int | None, ...] | None = None
  label_names: tuple[str, ...] | None = None
  image_key: str | None = None
  label_key: str | None = None
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None

  def __getitem__(self, key: str) -> Any:
    if key not in {f.name for f in dataclasses.fields(self)}:
      raise KeyError(key)
    return getattr(self, key)

  def get(self, key: str, default: Any = None) -> Any:
    return getattr(self, key, default)


def dataset_info(name: str, data_dir: str | os.PathLike | None = None,
                 tokenizer: Any = None) -> DatasetInfo:
  """Facts about dataset `name` (prepared on first use if embedded).

  A dataset with an Image and a ClassLabel feature is 'image'; else one with a Text feature is
  'text' (vocab_size and eos_id then come from `tokenizer`: None = bytes, 256 and 255).
  """
  builder = sources.open_builder(name, data_dir)
  splits = tuple(sorted(builder.info.splits))
  common = dict(
      name=os.fspath(name), path=os.fspath(builder.data_path), splits=splits,
      num_examples={s: int(builder.info.splits[s].num_examples) for s in splits},
      eval_split=next((s for s in ('validation', 'test') if s in splits), splits[0]))
  if (sources.features_of_type(builder, tfds.features.Image)
      and sources.features_of_type(builder, tfds.features.ClassLabel)):
    image_key = sources.pick_feature(builder, tfds.features.Image, ('image',), None, 'image')
    label_key = sources.pick_feature(builder, tfds.features.ClassLabel, ('label',), None, 'label')
    label = builder.info.features[label_key]
    mean, std = images.norm_stats(builder, image_key)
    return DatasetInfo(kind='image', num_classes=int(label.num_classes),
                       image_shape=tuple(builder.info.features[image_key].shape),
                       label_names=tuple(label.names), image_key=image_key, label_key=label_key,
                       mean=tuple(mean), std=tuple(std), **common)
  if sources.features_of_type(builder, tfds.features.Text):
    base = sources.dataset_base_name(builder)
    key = sources.pick_feature(builder, tfds.features.Text,
                               (text.TEXT_FEATURES.get(base, 'text'), 'text'), None, 'text')
    tok = tokenizers_lib.get_tokenizer(tokenizer)
    return DatasetInfo(kind='text', vocab_size=int(tok.vocab_size), eos_id=int(tok.eos_id),
                       tokenizer=getattr(tok, 'name', type(tok).__name__), text_key=key, **common)
  raise ValueError(f'dataset {name!r} has neither Image+ClassLabel nor Text features: '
                   f'{sorted(builder.info.features.keys())}')
