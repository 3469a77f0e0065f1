"""Shared pieces of the Hugging Face family tables: the `Family` record and helpers.

A `Family` (one per HF model_type, see `families.py` and `vit.py`) holds
  * `top` / `layer`: the name tables (`layer` names contain '{i}'; their
    paths are relative to our block_{i});
  * `renames`: other spellings of the same tensors found in real checkpoints
    (older transformers versions, base-model checkpoints without a prefix);
  * `ignore`: non-parameter buffers old checkpoints carry and transformers
    itself skips on load;
  * `tied_head`: the readout tensor transformers ignores when embeddings are tied;
  * `from_hf` / `to_hf`: config.json <-> our config;
  * `fixed`: the config fields the HF class cannot vary (checked on export).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from hyperinit.interop.convert import Entry, Plain
from hyperinit.models import presets
from hyperinit.models.config import ModelConfig, TransformerConfig

PLAIN, LINEAR = Plain(), Plain(transpose=True)

ACT_FROM_HF = {'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_fast': 'gelu_tanh',
               'gelu': 'gelu', 'relu': 'relu', 'silu': 'silu', 'swish': 'silu'}
ACT_TO_HF = {'gelu_tanh': 'gelu_new', 'gelu': 'gelu', 'relu': 'relu', 'silu': 'silu'}

# Sentinels for `Family.fixed`: head_dim must be embed_dim / num_heads; plain multi-head attention.
STANDARD_HEAD_DIM, MHA = 'embed_dim/num_heads', 'num_heads'

# Forward-pass options no HF family has (muP multipliers, head_dim clones' rope tiling).
COMMON_FIXED: dict[str, tuple] = {
    'rope_tile': (1,), 'attn_scale': ('sqrt',), 'attn_mult': (1.0,), 'embed_mult': (1.0,),
    'logits_mult': (1.0,), 'residual_mult': (1.0,)}


@dataclasses.dataclass(frozen=True)
class Family:
  """One HF model_type: name tables, config translation, exportability (module docstring)."""
  model_type: str
  architecture: str
  top: tuple[Entry, ...]
  layer: tuple[Entry, ...]
  from_hf: Callable[[Mapping[str, Any]], ModelConfig]
  to_hf: Callable[[Any], dict[str, Any]]
  fixed: Mapping[str, Any]
  renames: tuple[tuple[str, str], ...] = ()
  ignore: tuple[str, ...] = ()
  tied_head: str | None = None


# --- config helpers ------------------------------------------------------------------

def get(d: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
  """First present, non-null value among `keys` (HF configs accept aliases)."""
  for k in keys:
    if d.get(k) is not None:
      return d[k]
  return default


def require(d: Mapping[str, Any], model_type: str, **wanted: Any) -> None:
  for key, want in wanted.items():
    got = d.get(key, want)
    if got != want:
      raise ValueError(f'{model_type} config.json has {key}={got!r}; hyperinit implements only '
                       f'{key}={want!r}')


def act(d: Mapping[str, Any], key: str, default: str, model_type: str) -> str:
  name = d.get(key) or default
  if name not in ACT_FROM_HF:
    raise ValueError(f'{model_type} config.json has {key}={name!r}; supported activations: '
                     f'{sorted(ACT_FROM_HF)}')
  return ACT_FROM_HF[name]


def rope(d: Mapping[str, Any], model_type: str, theta_key: str = 'rope_theta',
         pct_key: str | None = None, default_pct: float = 1.0) -> tuple[float, float]:
  """(rope_theta, rotary_pct), read as transformers 5 does.

  `rope_parameters` (v5) or `rope_scaling` (v4) wins over the legacy top-level
  key; a scaling type other than 'default' is refused.
  """
  rp = d.get('rope_scaling') or d.get('rope_parameters') or {}
  kind = rp.get('rope_type', rp.get('type', 'default'))
  if kind != 'default':
    raise ValueError(f"{model_type} config.json asks for RoPE scaling rope_type={kind!r}; "
                     "hyperinit implements only rope_type='default' (no scaling)")
  theta = float(get(rp, 'rope_theta', default=get(d, theta_key, default=10000.0)))
  pct = 1.0
  if pct_key is not None:
    pct = float(get(rp, 'partial_rotary_factor', default=get(d, pct_key, default=default_pct)))
  return theta, pct


def kv_and_head_dim(d: Mapping[str, Any], embed: int, heads: int, kv_key: str | None = None):
  """(num_kv_heads, head_dim) as config fields: None when they take the default."""
  kv = get(d, kv_key, default=heads) if kv_key else heads
  head_dim = get(d, 'head_dim', default=embed // heads)
  return (None if kv == heads else int(kv)), (None if head_dim * heads == embed else int(head_dim))


def transformer(family: str, **fields) -> TransformerConfig:
  return TransformerConfig(**{**presets.FAMILIES[family], **fields})


def rope_params(cfg, partial: bool = False) -> dict[str, Any]:
  rp = {'rope_type': 'default', 'rope_theta': float(cfg.rope_theta)}
  if partial:
    rp['partial_rotary_factor'] = float(cfg.rotary_pct)
  return rp


def norm_pair(hf: str, ours: str):
  return [(f'{hf}.weight', f'{ours}/scale', PLAIN), (f'{hf}.bias', f'{ours}/bias', PLAIN)]


def dense(hf: str, ours: str, op=LINEAR):
  return [(f'{hf}.weight', f'{ours}/kernel', op), (f'{hf}.bias', f'{ours}/bias', op)]


def qkv(attr: str):
  return tuple(f'attn/{n}/{attr}' for n in ('query', 'key', 'value'))
