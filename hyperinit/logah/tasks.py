"""What a GHN run config (configs/ghn.py) means: GHN and meta configs, the pool, targets, data.

    ghn_cfg, meta_cfg = ghn_config(config), meta_config(config)
    spec = pool_spec(config)                      # samplers.PoolSpec sized by the dataset
    pool, groups = make_pool(config)              # sampled architectures, fixed meta-batches
    held_out = targets(config)                    # e.g. 'L6-D128-H4-P2' -> a ViTConfig
    loader = data_loader(config, 'train', train=True, seed=0)   # grain, checkpointable
    batch = meta_batch(next(iter(loader)))        # what meta.meta_step / task_loss read

Images keep their keys ({'image' [B, H, W, C], 'label' [B]}); language-model
rows {'inputs', 'targets'} [B, T] become {'tokens' [B, T + 1]}.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import numpy as np

from hyperinit import data
from hyperinit.logah import meta, samplers
from hyperinit.logah.ghn import GHNConfig
from hyperinit.models.config import ModelConfig

_POOL_FIELDS = ('depths', 'widths', 'width_step', 'heads', 'patch_sizes', 'mlp_ratios')


def ghn_config(config: Any) -> GHNConfig:
  """`config.ghn` as a GHNConfig (unknown fields raise, naming them)."""
  return GHNConfig.from_dict(config.ghn.to_dict())


def meta_config(config: Any) -> meta.MetaConfig:
  """`config.meta` as a MetaConfig whose schedule ends at `config.num_steps`."""
  fields = {f.name for f in dataclasses.fields(meta.MetaConfig)} - {'total_steps'}
  unknown = sorted(set(config.meta.keys()) - fields)
  if unknown:
    raise ValueError(f'unknown config.meta fields {unknown}; expected some of {sorted(fields)}')
  if int(config.num_steps) < 1:
    raise ValueError(f'config.num_steps must be >= 1, got {config.num_steps}')
  return meta.MetaConfig(total_steps=int(config.num_steps), **config.meta.to_dict())


@functools.lru_cache(maxsize=16)
def _info(dataset: str, data_dir: str | None):
  return data.dataset_info(dataset, data_dir=data_dir)


def dataset_info(config: Any):
  """`hyperinit.data.dataset_info` of `config.data.dataset` (cached)."""
  return _info(config.data.dataset, config.data.get('data_dir'))


def pool_spec(config: Any) -> samplers.PoolSpec:
  """The named pool with `config.pool` overrides and the dataset's task fields.

  ViT pools take image size, channels and classes from the dataset and keep the
  patch sizes that divide the image; GPT pools take the vocabulary and use
  `data.seq_len` as max_len.
  """
  name = config.pool.name
  if name not in samplers.POOLS:
    raise ValueError(f'config.pool.name={name!r} is not one of {sorted(samplers.POOLS)}')
  spec = samplers.POOLS[name]
  over = {k: config.pool[k] for k in _POOL_FIELDS if config.pool.get(k) is not None}
  if 'widths' in over:
    over['widths'] = tuple(tuple(int(v) for v in row) for row in over['widths'])
  for k in ('depths', 'heads', 'patch_sizes', 'mlp_ratios'):
    if k in over:
      over[k] = tuple(int(v) for v in over[k])
  spec = dataclasses.replace(spec, **over)
  info = dataset_info(config)
  if spec.kind == 'vit':
    if info.kind != 'image':
      raise ValueError(f'pool {name!r} holds ViTs but config.data.dataset={info.name!r} is '
                       f'{info.kind}; name an image dataset (digits, cifar10, ...)')
    h, w, c = info.image_shape
    if h is None or h != w:
      raise ValueError(f'dataset {info.name!r} has images of shape {info.image_shape}; the ViT '
                       'pools need fixed square images')
    patches = tuple(p for p in spec.patch_sizes if h % p == 0)
    if not patches:
      raise ValueError(f'no patch size in {spec.patch_sizes} divides the {h}x{h} images of '
                       f'{info.name!r}; set config.pool.patch_sizes')
    return dataclasses.replace(spec, image_size=int(h), num_channels=int(c),
                               num_classes=int(info.num_classes), patch_sizes=patches)
  if info.kind != 'text':
    raise ValueError(f'pool {name!r} holds language models but config.data.dataset='
                     f'{info.name!r} is {info.kind}; name a text dataset (pydoc_text, lm1b, ...)')
  return dataclasses.replace(spec, vocab_size=int(info.vocab_size),
                             max_len=int(config.data.seq_len))


def make_pool(config: Any) -> tuple[list[ModelConfig], list[tuple[ModelConfig, ...]]]:
  """(distinct sampled architectures, fixed meta-batch groups) of `config.pool`."""
  p = config.pool
  pool = samplers.sample_configs(pool_spec(config), int(p.size), seed=int(p.seed), unique=True)
  if p.scan_layers:
    pool = [c.replace(scan_layers=True) for c in pool]
  return pool, samplers.meta_batches(pool, int(p.meta_batch), seed=int(p.seed))


_TARGET_RE = re.compile(r'^L(\d+)-D(\d+)-H(\d+)((?:-[PM]\d+)*)$')


def parse_target(text: str, spec: samplers.PoolSpec) -> ModelConfig:
  """'L6-D128-H4-P2' (layers, width, heads, [patch], [M mlp]) -> a config of the pool's kind."""
  m = _TARGET_RE.match(text.strip())
  if not m:
    raise ValueError(f'target {text!r} is not of the form L<layers>-D<width>-H<heads>'
                     '[-P<patch>][-M<mlp>], e.g. L6-D128-H4-P2')
  extra = dict((tok[0], int(tok[1:])) for tok in m.group(4).split('-') if tok)
  return samplers.build_config(spec, int(m.group(1)), int(m.group(2)), int(m.group(3)),
                               patch_size=extra.get('P'), mlp_dim=extra.get('M'))


def targets(config: Any) -> dict[str, ModelConfig]:
  """Held-out targets of `config.finetune.targets`, by their spec string."""
  spec = pool_spec(config)
  names = [t.strip() for t in str(config.finetune.targets).split(',') if t.strip()]
  out = {name: parse_target(name, spec) for name in names}
  if config.pool.scan_layers:
    out = {k: v.replace(scan_layers=True) for k, v in out.items()}
  return out


def data_loader(config: Any, split: str, *, train: bool, seed: int, batch_size: int,
                num_epochs: int | None = None):
  """A grain dataset of `config.data.dataset` (iter() is checkpointable).

  Every process reads the whole batch (shard 0 of 1): a GHN meta-step splits a batch over
  the mesh itself (`train.ghn_step`), and it is small next to the GHN's work.
  """
  d, info = config.data, dataset_info(config)
  common = dict(split=split, batch_size=int(batch_size), seed=int(seed),
                data_dir=d.get('data_dir'), num_epochs=num_epochs, shard_index=0, shard_count=1)
  if info.kind == 'image':
    return data.image_loader(d.dataset, train=train, **common)
  return data.lm_loader(d.dataset, seq_len=int(d.seq_len), shuffle=train, **common)


def eval_split(config: Any) -> str:
  return config.data.get('eval_split') or dataset_info(config).eval_split


def meta_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A loader batch in `meta.task_loss`'s format (LM rows -> 'tokens' [B, T + 1])."""
  if 'tokens' in batch or 'image' in batch:
    return {k: v for k, v in batch.items() if k in ('tokens', 'image', 'label')}
  if 'inputs' not in batch or 'targets' not in batch:
    raise ValueError(f'batch has keys {sorted(batch)}; expected image/label or inputs/targets')
  # inputs = chunk[:-1], targets = chunk[1:]: the chunk is inputs + the last target.
  return {'tokens': np.concatenate([batch['inputs'], batch['targets'][:, -1:]], axis=1)}


def eval_batches(config: Any, batch_size: int | None = None,
                 count: int | None = None) -> list[dict[str, np.ndarray]]:
  """The first `count` (default data.eval_batches) batches of the eval split, in fixed order."""
  count = int(config.data.eval_batches if count is None else count)
  bs = int(batch_size or config.data.eval_batch_size)
  out = []
  for batch in data_loader(config, eval_split(config), train=False, seed=0, batch_size=bs,
                           num_epochs=1):
    if len(out) == count:
      break
    out.append(batch)
  if len(out) < count:
    raise ValueError(f'eval split {eval_split(config)!r} of {config.data.dataset!r} gave only '
                     f'{len(out)} full batches of {bs}; lower data.eval_batches or eval_batch_size')
  return out
