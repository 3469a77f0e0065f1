"""Published model sizes and tiny test sizes, by name.

`get_config('gpt2')`, `get_config('llama-tiny', scan_layers=True)`.  Family
defaults (norm, activation, positions, ...) come from `FAMILIES`; sizes from
`PRESETS`.  OPT-350m is left out on purpose: it is post-LN with a projected
embedding, which this model family does not implement.
"""

from __future__ import annotations

from typing import Any

from hyperinit.models.config import ModelConfig, TransformerConfig, ViTConfig

FAMILIES: dict[str, dict[str, Any]] = {
    'gpt2': dict(family='gpt2', vocab_size=50257, max_len=1024, norm='layernorm',
                 activation='gelu_tanh', use_bias=True, position='learned', tie_embeddings=True),
    'opt': dict(family='opt', vocab_size=50272, max_len=2048, position_offset=2,
                norm='layernorm', activation='relu', use_bias=True, position='learned',
                tie_embeddings=True),
    'gpt_neox': dict(family='gpt_neox', vocab_size=50304, max_len=2048, norm='layernorm',
                     activation='gelu', use_bias=True, position='rope', rotary_pct=0.25,
                     parallel_residual=True, tie_embeddings=False),
    'llama': dict(family='llama', vocab_size=32000, max_len=2048, norm='rmsnorm',
                  activation='silu', gated_mlp=True, use_bias=False, position='rope',
                  tie_embeddings=False),
    'olmo': dict(family='olmo', vocab_size=50304, max_len=2048, norm='layernorm_nonparam',
                 activation='silu', gated_mlp=True, use_bias=False, position='rope',
                 tie_embeddings=True),
}

_SIZES = lambda L, D, H, F, **kw: dict(num_layers=L, embed_dim=D, num_heads=H, mlp_dim=F, **kw)

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # GPT-2 (Radford et al. 2019)
    'gpt2': ('gpt2', _SIZES(12, 768, 12, 3072)),
    'gpt2-medium': ('gpt2', _SIZES(24, 1024, 16, 4096)),
    'gpt2-large': ('gpt2', _SIZES(36, 1280, 20, 5120)),
    'gpt2-xl': ('gpt2', _SIZES(48, 1600, 25, 6400)),
    # OPT (Zhang et al. 2022), pre-LN sizes
    'opt-125m': ('opt', _SIZES(12, 768, 12, 3072)),
    'opt-1.3b': ('opt', _SIZES(24, 2048, 32, 8192)),
    'opt-2.7b': ('opt', _SIZES(32, 2560, 32, 10240)),
    'opt-6.7b': ('opt', _SIZES(32, 4096, 32, 16384)),
    # Pythia (Biderman et al. 2023)
    'pythia-70m': ('gpt_neox', _SIZES(6, 512, 8, 2048)),
    'pythia-160m': ('gpt_neox', _SIZES(12, 768, 12, 3072)),
    'pythia-410m': ('gpt_neox', _SIZES(24, 1024, 16, 4096)),
    'pythia-1b': ('gpt_neox', _SIZES(16, 2048, 8, 8192)),
    'pythia-1.4b': ('gpt_neox', _SIZES(24, 2048, 16, 8192)),
    'pythia-2.8b': ('gpt_neox', _SIZES(32, 2560, 32, 10240)),
    # Llama-style
    'smollm-135m': ('llama', _SIZES(30, 576, 9, 1536, num_kv_heads=3, vocab_size=49152,
                                    tie_embeddings=True)),
    'smollm-360m': ('llama', _SIZES(32, 960, 15, 2560, num_kv_heads=5, vocab_size=49152,
                                    tie_embeddings=True)),
    'tinyllama-1.1b': ('llama', _SIZES(22, 2048, 32, 5632, num_kv_heads=4)),
    'llama2-7b': ('llama', _SIZES(32, 4096, 32, 11008, max_len=4096)),
    # OLMo (Groeneveld et al. 2024)
    'olmo-1b': ('olmo', _SIZES(16, 2048, 16, 8192)),
    'olmo-7b': ('olmo', _SIZES(32, 4096, 32, 11008, tie_embeddings=False)),
    # Tiny sizes for tests and CPU runs (byte-level vocab).
    'gpt2-tiny': ('gpt2', _SIZES(2, 64, 4, 256, vocab_size=256, max_len=128)),
    'opt-tiny': ('opt', _SIZES(2, 64, 4, 256, vocab_size=256, max_len=128)),
    'pythia-tiny': ('gpt_neox', _SIZES(2, 64, 4, 256, vocab_size=256, max_len=128)),
    'llama-tiny': ('llama', _SIZES(2, 64, 4, 192, vocab_size=256, max_len=128)),
    'llama-gqa-tiny': ('llama', _SIZES(2, 64, 4, 192, num_kv_heads=2, vocab_size=256, max_len=128)),
    'llama-mqa-tiny': ('llama', _SIZES(2, 64, 4, 192, num_kv_heads=1, vocab_size=256, max_len=128,
                                       tie_embeddings=True)),
    'olmo-tiny': ('olmo', _SIZES(2, 64, 4, 192, vocab_size=256, max_len=128)),
}

VIT_PRESETS: dict[str, dict[str, Any]] = {
    # Dosovitskiy et al. 2021 / Touvron et al. 2021 sizes at 224px, patch 16, ImageNet-1k.
    'vit-ti': dict(embed_dim=192, num_layers=12, num_heads=3, mlp_dim=768),
    'vit-s': dict(embed_dim=384, num_layers=12, num_heads=6, mlp_dim=1536),
    'vit-b': dict(embed_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
    'vit-l': dict(embed_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}
_VIT_224 = dict(image_size=224, patch_size=16, num_classes=1000)
_VIT_TINY = dict(embed_dim=64, num_layers=2, num_heads=4, mlp_dim=128, image_size=32,
                 patch_size=4, num_classes=10)


def names() -> list[str]:
  return sorted(PRESETS) + sorted(VIT_PRESETS) + ['vit-tiny']


def get_config(name: str, **overrides: Any) -> ModelConfig:
  """Config for a preset name; keyword overrides replace any field."""
  if name == 'vit-tiny':
    return ViTConfig(**{**_VIT_TINY, **overrides})
  if name in VIT_PRESETS:
    return ViTConfig(**{**_VIT_224, **VIT_PRESETS[name], **overrides})
  if name not in PRESETS:
    raise ValueError(f'unknown model preset {name!r}; known presets: {names()}')
  family, sizes = PRESETS[name]
  return TransformerConfig(**{**FAMILIES[family], **sizes, **overrides})
