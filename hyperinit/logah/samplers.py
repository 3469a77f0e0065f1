"""Seeded architecture samplers (ViTs-1K / GPTs-1K-like pools) and fixed meta-batches.

    pool = sample_configs('vits1k', 1000, seed=0)     # ViTConfig list, digits-sized inputs
    pool = sample_configs('gpt-cpu', 64, seed=0, unique=True)   # 64 distinct GPTs for CPU runs
    groups = meta_batches(pool, size=4, seed=0)      # fixed tuples of configs

The LoGAH pools (Zhou et al. 2024, their dataset generators):
  ViTs-1K: depth 3-9; width 384-512 at depth 3, 256-384 at depth 4-5, 128-256
    deeper, step 32; heads from {3, 4, 6, 8, 12} dividing the width; MLP 4x.
  GPTs-1K: depth 3-9; width 176-256 at depth 3, 128-176 at depth 4-5, 72-176
    deeper, step 8; 8 heads; < 50M params.
Inputs come from the task: our embedded image set is sklearn digits (8x8x1,
10 classes; patch 2 or 4) and the embedded text a byte vocabulary of 256.
GPT pools have untied token embedding and readout, as the reference's.

The CPU pools ('gpt-cpu', 'vit-cpu') are the same families shrunk to what 2
CPU cores meta-train in minutes: depth 2-4, width 64-96 (step 8), 4 or 8
heads, MLP ratio 2, 3 or 4 (ViTs: patch 2 or 4): 90 distinct GPTs, 180 ViTs.
They stay narrower and shallower than the held-out targets of
configs/ghn.py's experiment (5 x 112 and 6 x 128).

Meta-batches are fixed groups of configs (sorted by graph size, so a group
shares one padding bucket): a jitted meta-step is compiled once per group,
which bounds recompilation to `len(groups)` programs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from hyperinit.logah.graph import build_graph
from hyperinit.models.config import ModelConfig, TransformerConfig, ViTConfig
from hyperinit.models.presets import FAMILIES


@dataclasses.dataclass(frozen=True)
class PoolSpec:
  """Ranges of one architecture pool."""
  kind: str                                          # 'vit' | 'gpt'
  depths: tuple[int, int]                            # inclusive
  # (min depth, width lo, width hi): the first row whose min depth <= depth applies.
  widths: tuple[tuple[int, int, int], ...]
  width_step: int
  heads: tuple[int, ...]                             # choices that divide the width
  mlp_ratio: int = 4                                 # build_config's default MLP width / width
  mlp_ratios: tuple[int, ...] = (4,)                 # sampled MLP ratios
  max_params: int = 50_000_000
  # task: images
  image_size: int = 8
  num_channels: int = 1
  num_classes: int = 10
  patch_sizes: tuple[int, ...] = (2, 4)
  # task: text
  vocab_size: int = 256
  max_len: int = 64
  tie_embeddings: bool = False                       # the reference's GPT pools are untied


POOLS: dict[str, PoolSpec] = {
    'vits1k': PoolSpec('vit', (3, 9), ((6, 128, 256), (4, 256, 384), (0, 384, 512)), 32,
                       (3, 4, 6, 8, 12), max_params=10**9),
    'gpts1k': PoolSpec('gpt', (3, 9), ((6, 72, 176), (4, 128, 176), (0, 176, 256)), 8, (8,)),
    # Small ranges for CPU runs and tests (see the module docstring).
    'vit-cpu': PoolSpec('vit', (2, 4), ((0, 64, 96),), 8, (4, 8), mlp_ratios=(2, 3, 4)),
    'gpt-cpu': PoolSpec('gpt', (2, 4), ((0, 64, 96),), 8, (4, 8), mlp_ratios=(2, 3, 4)),
}


def num_params(cfg: ModelConfig) -> int:
  """Exact parameter count of a config, in closed form (no tracing; fast enough for 1000s)."""
  d, h, kv, dh, f = cfg.embed_dim, cfg.num_heads, cfg.n_kv_heads, cfg.d_head, cfg.mlp_dim
  b = int(cfg.use_bias)
  norm = {'layernorm': 2 * d, 'rmsnorm': d, 'layernorm_nonparam': 0}[cfg.norm]
  attn = d * (h + 2 * kv) * dh + b * (h + 2 * kv) * dh + h * dh * d + b * d
  gate = 2 if cfg.gated_mlp else 1
  mlp = d * gate * f + b * gate * f + f * d + b * d
  total = cfg.num_layers * (attn + mlp + 2 * norm) + norm
  if isinstance(cfg, ViTConfig):
    p = cfg.patch_size
    return total + p * p * cfg.num_channels * d + d + d + (cfg.num_patches + 1) * d \
        + d * cfg.num_classes + cfg.num_classes
  total += cfg.vocab_size * d
  if cfg.position == 'learned':
    total += (cfg.max_len + cfg.position_offset) * d
  if not cfg.tie_embeddings:
    total += d * cfg.vocab_size
  return total


def build_config(spec: PoolSpec, depth: int, width: int, heads: int,
                 patch_size: int | None = None, mlp_dim: int | None = None) -> ModelConfig:
  """One architecture of a pool's kind and task (e.g. a held-out target wider than the pool).

  The task fields (image size / channels / classes, or vocabulary / max_len /
  tying) come from `spec`; patch_size defaults to the first of spec.patch_sizes,
  mlp_dim to spec.mlp_ratio * width.
  """
  common = dict(num_layers=int(depth), embed_dim=int(width), num_heads=int(heads),
                mlp_dim=int(mlp_dim or spec.mlp_ratio * width))
  if spec.kind == 'vit':
    return ViTConfig(image_size=spec.image_size, num_channels=spec.num_channels,
                     num_classes=spec.num_classes,
                     patch_size=int(patch_size or spec.patch_sizes[0]), **common)
  if spec.kind == 'gpt':
    if patch_size is not None:
      raise ValueError(f'patch_size={patch_size} given for a gpt pool')
    return TransformerConfig(**{**FAMILIES['gpt2'], 'vocab_size': spec.vocab_size,
                                'max_len': spec.max_len, 'tie_embeddings': spec.tie_embeddings,
                                **common})
  raise ValueError(f'unknown pool kind {spec.kind!r}; expected vit or gpt')


def _one(spec: PoolSpec, rng: np.random.Generator) -> ModelConfig:
  depth = int(rng.integers(spec.depths[0], spec.depths[1] + 1))
  lo, hi = next((lo, hi) for min_d, lo, hi in spec.widths if depth >= min_d)
  width = int(rng.choice(np.arange(lo, hi + 1, spec.width_step)))
  heads = [h for h in spec.heads if width % h == 0]
  if not heads:
    raise ValueError(f'no head count in {spec.heads} divides width {width}')
  num_heads = int(rng.choice(heads))
  patch = int(rng.choice(spec.patch_sizes)) if spec.kind == 'vit' else None
  ratio = int(rng.choice(spec.mlp_ratios))
  return build_config(spec, depth, width, num_heads, patch, mlp_dim=ratio * width)


def sample_configs(pool: str | PoolSpec, n: int, seed: int, unique: bool = False) -> list[ModelConfig]:
  """n seeded architectures from a pool (by name in POOLS, or a PoolSpec)."""
  if isinstance(pool, str) and pool not in POOLS:
    raise ValueError(f'unknown pool {pool!r}; known pools: {sorted(POOLS)}')
  spec = POOLS[pool] if isinstance(pool, str) else pool
  rng = np.random.default_rng(seed)
  out: list[ModelConfig] = []
  seen: set[ModelConfig] = set()
  for _ in range(100 * n):
    cfg = _one(spec, rng)
    if num_params(cfg) >= spec.max_params or (unique and cfg in seen):
      continue
    seen.add(cfg)
    out.append(cfg)
    if len(out) == n:
      return out
  raise ValueError(f'could only draw {len(out)} distinct architectures of {n} from this pool')


def meta_batches(configs: Sequence[ModelConfig], size: int, seed: int) -> list[tuple[ModelConfig, ...]]:
  """Fixed groups of `size` configs, sorted by graph size so each group pads to one bucket.

  Configs left over (len % size) are dropped; the group order is shuffled by seed.
  """
  if size < 1 or len(configs) < size:
    raise ValueError(f'need at least size={size} >= 1 configs, got {len(configs)}')
  order = sorted(configs, key=lambda c: (build_graph(c).num_nodes, num_params(c)))
  groups = [tuple(order[i:i + size]) for i in range(0, len(order) - size + 1, size)]
  np.random.default_rng(seed).shuffle(groups)
  return groups
