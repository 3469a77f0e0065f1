"""Flax (linen) models whose parameters all carry logical-axis annotations.

    cfg = models.get_config('gpt2-tiny')
    params = models.init_params(cfg, jax.random.key(0))   # plain nested dict
    logits = models.build(cfg).apply({'params': params}, tokens)
    specs = models.param_specs(cfg)     # same tree, ParamSpec leaves
    shapes = models.param_shapes(cfg)   # same tree, ShapeDtypeStruct leaves (no allocation)
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperinit import spec as spec_lib
from hyperinit.user_model import as_key
from hyperinit.models import layers
from hyperinit.models.config import (BlockConfig, ModelConfig, TransformerConfig, ViTConfig,
                                     config_from_dict)
from hyperinit.models.presets import get_config, names as preset_names
from hyperinit.models.transformer import Transformer
from hyperinit.models.vit import ViT


def build(cfg: ModelConfig) -> nn.Module:
  """The linen module for a config."""
  if isinstance(cfg, TransformerConfig):
    return Transformer(cfg)
  if isinstance(cfg, ViTConfig):
    return ViT(cfg)
  raise TypeError(f'expected TransformerConfig or ViTConfig, got {type(cfg).__name__}')


def dummy_input(cfg: ModelConfig, batch: int = 1) -> jax.Array:
  """A small input of the right kind, for init and shape inference."""
  if isinstance(cfg, ViTConfig):
    return jnp.zeros((batch, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
  return jnp.zeros((batch, min(cfg.max_len, 8)), jnp.int32)


def init_boxed(cfg: ModelConfig, rng: jax.Array | int):
  """Params with their `Annotated` boxes (what `module.init` returns); rng: a key or an int seed."""
  return build(cfg).init(as_key(rng), dummy_input(cfg))['params']


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: ModelConfig, rng: jax.Array | int):
  """Freshly initialised params as a plain nested dict of arrays (jitted; cfg is static).

  rng: a `jax.random.key` or an int seed (the same params as `jax.random.key(seed)`).
  """
  return spec_lib.unbox(init_boxed(cfg, rng))


def apply_fn(cfg: ModelConfig):
  """A jitted `(params, inputs) -> outputs` for inference with deterministic=True."""
  module = build(cfg)
  return jax.jit(lambda params, x: module.apply({'params': params}, x))


@functools.lru_cache(maxsize=64)
def _abstract_boxed(cfg: ModelConfig):
  return jax.eval_shape(functools.partial(init_boxed, cfg), jax.random.key(0))


def param_specs(cfg: ModelConfig):
  """Tree of `ParamSpec` with the structure of the params (no allocation)."""
  return spec_lib.specs_from_boxed(_abstract_boxed(cfg))


def param_shapes(cfg: ModelConfig):
  """Tree of `jax.ShapeDtypeStruct` with the structure of the params (no allocation)."""
  return spec_lib.unbox(_abstract_boxed(cfg))


def count_params(cfg: ModelConfig) -> int:
  return spec_lib.count(param_shapes(cfg))


def init_std(cfg: ModelConfig, path: str, spec: spec_lib.ParamSpec, shape) -> float:
  """Std of the random init of the weight leaf at `path` ('/'-joined) with this spec and
  (per-layer) shape: GPT-2's 0.02 / sqrt(2L) on residual-output kernels, 0.02 elsewhere
  (or 1 / sqrt(fan_in) under init='fan_in').  Only for leaves drawn at random (kernels,
  embedding tables, the class token), not for gains / biases."""
  fan_in = math.prod(int(shape[i]) for i in spec.fan_in) if spec.fan_in else 1
  return layers.init_std(cfg, path, fan_in)


__all__ = ['BlockConfig', 'ModelConfig', 'Transformer', 'TransformerConfig', 'ViT', 'ViTConfig',
           'build', 'config_from_dict', 'count_params', 'dummy_input', 'get_config', 'init_boxed',
           'init_params', 'init_std', 'apply_fn', 'param_shapes', 'param_specs', 'preset_names']
