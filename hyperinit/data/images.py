"""Image-classification pipeline: tfds image/label examples -> normalised float32 batches.

Normalisation: x = (pixel / 255 - mean) / std per channel, with published statistics for the
common datasets (`NORM_STATS`) and otherwise statistics measured on the train split (all of it up
to 4096 examples, else 2048 evenly spaced ones).

Augmentation (train=True), kept light:
* fixed-size images: zero-pad by max(1, H // 8) pixels and take a random crop of the original
  size (a shift of up to 4 px at 32x32, 1 px for 8x8 digits), plus a horizontal flip for colour
  images (not for grayscale digits / characters, where a flip changes the class);
* variable-size images (ImageNet): a random crop of 35-100 % of the area with aspect ratio in
  [3/4, 4/3], resized to image_size, and a flip.  Evaluation resizes the shorter side to
  image_size / 0.875 and takes the central crop.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from hyperinit.data import pipeline, sources

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Published per-channel (mean, std) of pixel / 255 on the train split.
NORM_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet2012': _IMAGENET, 'imagenet2012_subset': _IMAGENET, 'imagenet_v2': _IMAGENET,
    'imagenette': _IMAGENET, 'imagenet_resized': _IMAGENET,
    'mnist': ((0.1307,), (0.3081,)), 'fashion_mnist': ((0.2860,), (0.3530,)),
}
# Datasets whose class changes under a horizontal flip (besides every grayscale one).
NO_FLIP = frozenset({'svhn_cropped'})
STATS_EXACT_UP_TO = 4096
STATS_SAMPLE = 2048


def open_images(dataset: str, split: str, data_dir: Any = None, image_key: str | None = None,
                label_key: str | None = None):
  """(data source, image feature, label feature, builder) for an image classification dataset."""
  builder = sources.open_builder(dataset, data_dir)
  image = sources.pick_feature(builder, tfds.features.Image, ('image',), image_key, 'image')
  label = sources.pick_feature(builder, tfds.features.ClassLabel, ('label',), label_key, 'label')
  return sources.open_split(builder, split), image, label, builder


def _as_hwc(image: Any) -> np.ndarray:
  image = np.asarray(image)
  return image[..., None] if image.ndim == 2 else image


def _pil_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, c] -> uint8 [height, width, c], bilinear (antialiased when shrinking)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.shape[:2] == (height, width):
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))
  return _as_hwc(out)


@functools.lru_cache(maxsize=32)
def _measured_stats(path: str, split: str,
                    image_key: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  builder = tfds.builder_from_directory(path)
  source = builder.as_data_source(split=split)
  n = len(source)
  index = range(n) if n <= STATS_EXACT_UP_TO else np.linspace(0, n - 1, STATS_SAMPLE).astype(int)
  total = total_sq = count = 0
  for i in index:
    x = _as_hwc(source[int(i)][image_key]).astype(np.float64) / 255.0
    x = x.reshape(-1, x.shape[-1])
    total = total + x.sum(0)
    total_sq = total_sq + (x * x).sum(0)
    count += x.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
  return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def norm_stats(builder, image_key: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel (mean, std) of pixel / 255: published if known, else measured on 'train'."""
  name = sources.dataset_base_name(builder)
  if name in NORM_STATS:
    return NORM_STATS[name]
  split = 'train' if 'train' in builder.info.splits else sorted(builder.info.splits)[0]
  return _measured_stats(os.fspath(builder.data_path), split, image_key)


CACHE_MAX_BYTES = 512 << 20  # splits of fixed-size images up to this size are decoded once


class _ArraySource:
  """A decoded split held in memory (random access, like a tfds data source)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, image_key: str, label_key: str):
    self._images, self._labels = images, labels
    self._image_key, self._label_key = image_key, label_key

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {self._image_key: self._images[index], self._label_key: self._labels[index]}


@functools.lru_cache(maxsize=4)
def _decoded_split(path: str, split: str, image_key: str, label_key: str) -> _ArraySource:
  source = tfds.builder_from_directory(path).as_data_source(split=split)
  reader = grain.MapDataset.source(source).to_iter_dataset(
      grain.ReadOptions(num_threads=8, prefetch_buffer_size=256))
  images, labels = [], []
  for example in reader:
    images.append(_as_hwc(example[image_key]))
    labels.append(example[label_key])
  return _ArraySource(np.stack(images), np.asarray(labels, np.int64), image_key, label_key)


def _cacheable(builder, split_source, image_key: str, shape: tuple[int | None, ...]) -> bool:
  if any(d is None for d in shape):
    return False
  dtype = np.dtype(builder.info.features[image_key].np_dtype)
  return len(split_source) * math.prod(shape) * dtype.itemsize <= CACHE_MAX_BYTES


class _Decode:
  """Example -> {'image': uint8 [S, S, C], 'label': int32 []} for fixed-size images (picklable).

  Resizes to `size` if given; no randomness (augmentation happens per batch).
  """

  def __init__(self, image_key: str, label_key: str, size: int | None):
    self._image_key, self._label_key, self._size = image_key, label_key, size

  def __call__(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
    image = _as_hwc(example[self._image_key])
    if self._size is not None:
      image = _pil_resize(image, self._size, self._size)
    return {'image': image, 'label': np.asarray(example[self._label_key], np.int32)}


class _CropVariable:
  """(example, rng) -> uint8 [S, S, C] crop of a variable-size image (picklable).

  Train: a random crop of 35-100 % of the area, aspect ratio in [3/4, 4/3], resized to S.
  Eval: shorter side resized to S / 0.875, central S x S crop.
  """

  def __init__(self, image_key: str, label_key: str, size: int, augment: bool):
    self._image_key, self._label_key = image_key, label_key
    self._size, self._augment = size, augment

  def _center_crop(self, image: np.ndarray, fraction: float) -> np.ndarray:
    h, w = image.shape[:2]
    scale = self._size / fraction / min(h, w)
    image = _pil_resize(image, max(self._size, round(h * scale)), max(self._size, round(w * scale)))
    h, w = image.shape[:2]
    top, left = (h - self._size) // 2, (w - self._size) // 2
    return image[top:top + self._size, left:left + self._size]

  def _random_crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    for _ in range(10):
      area = h * w * rng.uniform(0.35, 1.0)
      ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
      ch, cw = int(round(math.sqrt(area / ratio))), int(round(math.sqrt(area * ratio)))
      if 0 < ch <= h and 0 < cw <= w:
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return _pil_resize(image[top:top + ch, left:left + cw], self._size, self._size)
    return self._center_crop(image, 1.0)

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = _as_hwc(example[self._image_key])
    image = self._random_crop(image, rng) if self._augment else self._center_crop(image, 0.875)
    return {'image': image, 'label': np.asarray(example[self._label_key], np.int32)}


class _AugmentNormalise:
  """(batch, rng) -> batch with 'image' float32 [b, S, S, C], shifted / flipped / normalised.

  The randomness is drawn for the whole GLOBAL batch from the batch's rng (keyed by the step)
  and this process keeps its rows, so it does not depend on the process count.  Vectorised:
  one gather per batch instead of per-example Python.
  """

  def __init__(self, mean, std, augment: bool, flip: bool, pad: int, shard_index: int,
               shard_count: int):
    self._mean = np.asarray(mean, np.float32)
    self._std = np.asarray(std, np.float32)
    self._augment, self._flip, self._pad = augment, flip, pad
    self._shard_index, self._shard_count = shard_index, shard_count

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator):
    images = batch['image']
    if self._augment and (self._pad or self._flip):
      b, h, w = images.shape[:3]
      rows = slice(self._shard_index * b, (self._shard_index + 1) * b)
      total, p = b * self._shard_count, self._pad
      dy = rng.integers(0, 2 * p + 1, size=total)[rows]
      dx = rng.integers(0, 2 * p + 1, size=total)[rows]
      flip = (rng.random(size=total) < 0.5)[rows] & self._flip
      padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
      ys = dy[:, None] + np.arange(h)[None, :]
      xs = np.where(flip[:, None], w - 1 - np.arange(w)[None, :], np.arange(w)[None, :])
      xs = dx[:, None] + xs
      images = padded[np.arange(b)[:, None, None], ys[:, :, None], xs[:, None, :]]
    x = (images.astype(np.float32) * np.float32(1 / 255) - self._mean) / self._std
    return {**batch, 'image': np.ascontiguousarray(x, np.float32)}


def _with_mask(pair) -> dict[str, np.ndarray]:
  element, mask = pair
  return {**element, 'mask': mask}


def image_loader(dataset: str = 'digits', split: str = 'train', batch_size: int = 64,
                 seed: int = 0, train: bool = True, data_dir: str | os.PathLike | None = None,
                 num_epochs: int | None = None, shard_index: int | None = None,
                 shard_count: int | None = None, worker_count: int = 0, *,
                 image_size: int | None = None, shuffle: bool | None = None,
                 augment: bool | None = None, pad_final_batch: bool = False,
                 image_key: str | None = None, label_key: str | None = None,
                 cache: bool | None = None, read_threads: int = 8) -> grain.IterDataset:
  """Normalised (and, for training, lightly augmented) image-classification batches.

  Args:
    dataset: tfds name (embedded 'digits', or a prepared 'cifar10', 'imagenet2012', ...) or the
      path of a prepared version dir.
    split: tfds split, slicing allowed.
    batch_size: GLOBAL batch; this process yields batch_size // shard_count examples.
    seed: shuffle and augmentation seed (the augmentation of a global batch depends only on
      seed and the step, not on the process count).
    train: defaults shuffle and augment to True (False: fixed order, no augmentation).
    data_dir: tfds data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
    num_epochs: None repeats forever.
    shard_index, shard_count: this process's shard (default jax.process_index/count()).
    worker_count: > 0 adds grain multiprocess prefetch (batches then depend on the count).
    image_size: resize to image_size x image_size (required for variable-size datasets).
    shuffle, augment: override the defaults set by `train`.
    pad_final_batch: keep the last incomplete global batch, padded, and add 'mask' float32 [b]
      (1 real, 0 padding) to every batch: an evaluation then sees every example exactly once.
    image_key, label_key: feature names (default 'image'/'label' or the only Image/ClassLabel).
    cache: decode the split once and keep it in memory (default: when its images have a fixed
      size and take at most CACHE_MAX_BYTES, e.g. digits, mnist, cifar10); same batches either way.
    read_threads: threads preparing batches (each thread one batch).

  Returns:
    A grain IterDataset of {'image': float32 [b, H, W, C], 'label': int32 [b]} (+ 'mask'),
    b = batch_size // shard_count; iterators are checkpointable (get_state/set_state).
  """
  pipeline.check_epochs(num_epochs)
  shard_index, shard_count, local_batch = pipeline.resolve_shard(batch_size, shard_index,
                                                                 shard_count)
  source, image_feature, label_feature, builder = open_images(dataset, split, data_dir, image_key,
                                                              label_key)
  shape = tuple(builder.info.features[image_feature].shape)
  variable = any(d is None for d in shape[:2])
  if variable and image_size is None:
    raise ValueError(f'{dataset!r} has images of varying size {shape}; pass image_size=')
  channels = shape[-1]
  dtype = np.dtype(builder.info.features[image_feature].np_dtype)
  if dtype != np.uint8:
    raise ValueError(f'{dataset!r} stores {dtype} images; the image loader expects uint8 pixels')
  name = sources.dataset_base_name(builder)
  mean, std = norm_stats(builder, image_feature)
  if len(mean) == 1 and channels != 1:
    mean, std = mean * channels, std * channels
  if len(mean) != channels:
    raise ValueError(f'normalisation stats of {name!r} have {len(mean)} channels, the images '
                     f'{channels}')
  shuffle = train if shuffle is None else shuffle
  augment = train if augment is None else augment
  pad = 0 if variable else max(1, (image_size or shape[0]) // 8)
  flip = channels != 1 and name not in NO_FLIP
  if cache is None:
    cache = _cacheable(builder, source, image_feature, shape)
  if cache:
    source = _decoded_split(os.fspath(builder.data_path), split, image_feature, label_feature)

  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if variable:  # per-image random crops; the rng is keyed by the global position
    ds = ds.random_map(_CropVariable(image_feature, label_feature, image_size, augment), seed=seed)
  else:
    ds = ds.map(_Decode(image_feature, label_feature, image_size))
  ds = pipeline.RowShardMapDataset(ds, batch_size, shard_index, shard_count, pad=pad_final_batch)
  if pad_final_batch:
    ds = ds.map(_with_mask)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.random_map(_AugmentNormalise(mean, std, augment, flip, pad, shard_index, shard_count),
                     seed=(seed + 1) % 2**32)
  # Batches are computed whole in the prefetch threads, so the state is a batch index (the same
  # on every process); `read_threads` batches are in flight at once.
  out = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                             prefetch_buffer_size=read_threads))
  return pipeline.multiprocess(out, worker_count)
