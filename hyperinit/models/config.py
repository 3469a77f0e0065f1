"""Model configurations: frozen dataclasses (hashable, usable as jit statics).

`TransformerConfig` covers decoder-only language models of the GPT-2, OPT,
GPT-NeoX/Pythia, Llama and OLMo families; `ViTConfig` covers Vision
Transformer classifiers.  Both share the transformer-block fields in
`BlockConfig`.  Published sizes live in `presets.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

NORMS = ('layernorm', 'rmsnorm', 'layernorm_nonparam')
ACTIVATIONS = ('gelu_tanh', 'gelu', 'relu', 'silu')
POSITIONS = ('learned', 'rope', 'none')
ATTN_SCALES = ('sqrt', 'linear')
REMAT = ('none', 'full', 'dots')
DTYPES = ('float32', 'bfloat16', 'float16')
INITS = ('normal', 'fan_in')


def _check(name: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ValueError(f'{name}={value!r} is not supported; expected one of {list(allowed)}')


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Fields shared by every transformer block."""
  num_layers: int = 2
  embed_dim: int = 64           # d_model
  num_heads: int = 4            # query heads
  num_kv_heads: int | None = None  # None: = num_heads (MHA); 1: MQA; else GQA
  head_dim: int | None = None   # None: embed_dim // num_heads
  mlp_dim: int = 256
  norm: str = 'layernorm'
  norm_eps: float = 1e-5
  activation: str = 'gelu_tanh'
  gated_mlp: bool = False       # SwiGLU-style act(x W_gate) * (x W_up)
  use_bias: bool = True         # biases in every linear layer
  parallel_residual: bool = False  # x + attn(ln1 x) + mlp(ln2 x)  (GPT-NeoX)
  position: str = 'learned'     # 'rope' applies rotary embeddings inside attention
  rope_theta: float = 10000.0
  rotary_pct: float = 1.0       # fraction of each head (chunk) that is rotated
  rope_tile: int = 1            # head dim = rope_tile chunks, each rotated alike (head_dim clones)
  attn_scale: str = 'sqrt'      # logits * attn_mult / sqrt(d_head) or / d_head (muP)
  attn_mult: float = 1.0
  embed_mult: float = 1.0       # forward multiplier on the input embedding (muP)
  logits_mult: float = 1.0      # multiplier on the readout's input (muP output_mult / m)
  residual_mult: float = 1.0    # multiplier on each residual branch (depth-muP: L^-alpha)
  dropout_rate: float = 0.0
  init: str = 'normal'          # 'normal': N(0, init_std); 'fan_in': var = 1/fan_in
  init_std: float = 0.02
  dtype: str = 'float32'        # compute dtype
  param_dtype: str = 'float32'
  scan_layers: bool = False     # nn.scan over blocks: stacked params with a 'layers' axis
  remat: str = 'none'           # rematerialise blocks: none | full | dots (save matmuls)
  attention_impl: str | None = None  # jax.nn.dot_product_attention implementation

  def __post_init__(self):
    _check('norm', self.norm, NORMS)
    _check('activation', self.activation, ACTIVATIONS)
    _check('position', self.position, POSITIONS)
    _check('attn_scale', self.attn_scale, ATTN_SCALES)
    _check('remat', self.remat, REMAT)
    _check('dtype', self.dtype, DTYPES)
    _check('param_dtype', self.param_dtype, DTYPES)
    _check('init', self.init, INITS)
    for f in ('num_layers', 'embed_dim', 'num_heads', 'mlp_dim', 'rope_tile'):
      if int(getattr(self, f)) < 1:
        raise ValueError(f'{f} must be >= 1, got {getattr(self, f)}')
    if self.head_dim is None and self.embed_dim % self.num_heads:
      raise ValueError(f'embed_dim={self.embed_dim} is not divisible by num_heads='
                       f'{self.num_heads}; set head_dim explicitly')
    if self.num_heads % self.n_kv_heads:
      raise ValueError(f'num_heads={self.num_heads} must be a multiple of num_kv_heads='
                       f'{self.n_kv_heads}')
    if self.d_head % self.rope_tile:
      raise ValueError(f'head_dim={self.d_head} is not divisible by rope_tile={self.rope_tile}')
    if not 0.0 <= self.rotary_pct <= 1.0:
      raise ValueError(f'rotary_pct={self.rotary_pct} must lie in [0, 1]')
    if self.position == 'rope' and self.rotary_dim % 2:
      raise ValueError(f'rotary dimension {self.rotary_dim} (head_dim={self.d_head}, '
                       f'rope_tile={self.rope_tile}, rotary_pct={self.rotary_pct}) must be even')

  @property
  def n_kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else int(self.num_kv_heads)

  @property
  def d_head(self) -> int:
    return self.embed_dim // self.num_heads if self.head_dim is None else int(self.head_dim)

  @property
  def rotary_dim(self) -> int:
    """Rotated dims per rope chunk (a chunk is d_head / rope_tile wide)."""
    return int((self.d_head // self.rope_tile) * self.rotary_pct)

  def replace(self, **kw) -> 'BlockConfig':
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['kind'] = type(self).__name__
    return d


@dataclasses.dataclass(frozen=True)
class TransformerConfig(BlockConfig):
  """Decoder-only causal language model."""
  family: str = 'gpt2'          # gpt2 | opt | gpt_neox | llama | olmo (HF model_type)
  vocab_size: int = 256
  max_len: int = 128            # rows of the learned position table / longest sequence
  position_offset: int = 0      # learned position index = pos + offset (OPT: 2)
  tie_embeddings: bool = True   # readout = token embedding transposed
  scale_residual_init: bool = True  # GPT-2: residual-output kernels get std / sqrt(2L)

  def __post_init__(self):
    super().__post_init__()
    if self.vocab_size < 1 or self.max_len < 1:
      raise ValueError(f'vocab_size and max_len must be >= 1, got {self.vocab_size}, {self.max_len}')


@dataclasses.dataclass(frozen=True)
class ViTConfig(BlockConfig):
  """Vision Transformer classifier (class token, learned positions, pre-LN)."""
  image_size: int = 32
  patch_size: int = 4
  num_channels: int = 3
  num_classes: int = 10
  norm_eps: float = 1e-12
  activation: str = 'gelu'
  pool: str = 'cls'             # 'cls' token or global average pool ('gap')
  scale_residual_init: bool = False

  def __post_init__(self):
    super().__post_init__()
    _check('pool', self.pool, ('cls', 'gap'))
    if self.position != 'learned':
      raise ValueError(f'ViT uses learned positions, got position={self.position!r}')
    if self.image_size % self.patch_size:
      raise ValueError(f'image_size={self.image_size} is not divisible by '
                       f'patch_size={self.patch_size}')

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


ModelConfig = TransformerConfig | ViTConfig


def config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
  """Inverse of `to_dict` (also accepts an ml_collections ConfigDict)."""
  d = dict(d)
  kind = d.pop('kind', 'TransformerConfig')
  cls = {'TransformerConfig': TransformerConfig, 'ViTConfig': ViTConfig}.get(kind)
  if cls is None:
    raise ValueError(f'unknown model config kind {kind!r}; expected TransformerConfig or ViTConfig')
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ValueError(f'unknown {cls.__name__} fields {unknown}')
  return cls(**d)
