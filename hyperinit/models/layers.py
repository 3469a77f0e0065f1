"""Transformer building blocks whose every parameter carries a `ParamSpec`.

Logical axis names used by the models:
  vocab, embed, mlp, heads, kv_heads, head_dim, position, classes,
  patch, channels, layers (added by nn.scan); None for small fixed axes.
Activations are constrained with ('batch', 'length', 'act_embed'|...) names
that `hyperinit.sharding` maps onto the mesh.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperinit.models.config import BlockConfig
from hyperinit.spec import annotated


# --- initializers: (key, shape, dtype, fan_in) -> array -------------------------

def normal_init(std: float):
  def init(key, shape, dtype, fan_in):
    del fan_in
    return std * jax.random.normal(key, shape, dtype)
  return init


def fan_in_init(scale: float = 1.0):
  """var = scale^2 / fan_in, fan_in read from the annotation (not 'the last axis')."""
  def init(key, shape, dtype, fan_in):
    n = math.prod(shape[i] for i in fan_in) if fan_in else 1
    return (scale / math.sqrt(n)) * jax.random.normal(key, shape, dtype)
  return init


def zeros_init(key, shape, dtype, fan_in):
  del key, fan_in
  return jnp.zeros(shape, dtype)


def ones_init(key, shape, dtype, fan_in):
  del key, fan_in
  return jnp.ones(shape, dtype)


def weight_init(cfg: BlockConfig, scale: float = 1.0):
  """The config's matrix initializer; `scale` multiplies its std."""
  if cfg.init == 'fan_in':
    return fan_in_init(scale)
  return normal_init(cfg.init_std * scale)


def _dtype(name: str):
  return jnp.dtype(name)


# --- layers ----------------------------------------------------------------------

class Linear(nn.Module):
  """y = x . W (+ b), contracting the last len(in_axes) dims of x.

  Kernel shape: x.shape[-len(in_axes):] + out_shape, annotated
  in_axes + out_axes with the input dims as fan-in.
  """
  cfg: BlockConfig
  out_shape: tuple[int, ...]
  in_axes: tuple[str | None, ...]
  out_axes: tuple[str | None, ...]
  use_bias: bool = True
  init_scale: float = 1.0
  role: str = ''

  @nn.compact
  def __call__(self, x):
    n_in = len(self.in_axes)
    kshape = tuple(x.shape[-n_in:]) + tuple(self.out_shape)
    kernel = self.param(
        'kernel',
        annotated(weight_init(self.cfg, self.init_scale), self.in_axes + self.out_axes,
                  tuple(range(n_in)), self.role),
        kshape, _dtype(self.cfg.param_dtype))
    dt = _dtype(self.cfg.dtype)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(dt), kernel.astype(dt), (contract, ((), ())))
    if self.use_bias:
      # The role names the kernel; a readout's bias is an ordinary (vector-like) leaf.
      bias_role = '' if self.role == 'readout' else self.role
      bias = self.param('bias', annotated(zeros_init, self.out_axes, (), bias_role),
                        tuple(self.out_shape), _dtype(self.cfg.param_dtype))
      y = y + bias.astype(dt)
    return y


class Norm(nn.Module):
  """LayerNorm (gain+bias), RMSNorm (gain) or non-parametric LayerNorm, in fp32."""
  cfg: BlockConfig
  role: str = 'norm'

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dim = x.shape[-1]
    h = x.astype(jnp.float32)
    if cfg.norm == 'rmsnorm':
      h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + cfg.norm_eps)
    else:
      mu = jnp.mean(h, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(h - mu), axis=-1, keepdims=True)
      h = (h - mu) * jax.lax.rsqrt(var + cfg.norm_eps)
    pdt = _dtype(cfg.param_dtype)
    if cfg.norm != 'layernorm_nonparam':
      h = h * self.param('scale', annotated(ones_init, ('embed',), (), self.role), (dim,), pdt)
    if cfg.norm == 'layernorm':
      h = h + self.param('bias', annotated(zeros_init, ('embed',), (), self.role), (dim,), pdt)
    return h.astype(_dtype(cfg.dtype))


class Embed(nn.Module):
  """Lookup table (num, embed); `attend` gives x . E^T for a tied readout."""
  cfg: BlockConfig
  num: int
  num_axis: str = 'vocab'
  role: str = 'embedding'

  def setup(self):
    self.embedding = self.param(
        'embedding', annotated(weight_init(self.cfg), (self.num_axis, 'embed'), (0,), self.role),
        (self.num, self.cfg.embed_dim), _dtype(self.cfg.param_dtype))

  def __call__(self, ids):
    return jnp.take(self.embedding, ids, axis=0).astype(_dtype(self.cfg.dtype))

  def attend(self, x):
    dt = _dtype(self.cfg.dtype)
    return jnp.einsum('...d,vd->...v', x.astype(dt), self.embedding.astype(dt))


def apply_rope(x, positions, cfg: BlockConfig):
  """Rotary embedding, rotate-half convention (HF Llama / GPT-NeoX).

  x: [B, T, N, Dh]; positions: [B, T].  The head is `rope_tile` chunks; in each
  the first `rotary_dim` dims are rotated with the same frequencies, so a
  head_dim clone of a RoPE model rotates its duplicated chunks as the source did.
  """
  rot = cfg.rotary_dim
  if rot == 0:
    return x
  b, t, n, dh = x.shape
  chunk = dh // cfg.rope_tile
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, rot, 2, dtype=jnp.float32) / rot))
  ang = positions.astype(jnp.float32)[..., None] * inv_freq          # [B, T, rot/2]
  ang = jnp.concatenate([ang, ang], axis=-1)[:, :, None, None, :]    # [B, T, 1, 1, rot]
  xc = x.astype(jnp.float32).reshape(b, t, n, cfg.rope_tile, chunk)
  xr, xp = xc[..., :rot], xc[..., rot:]
  x1, x2 = jnp.split(xr, 2, axis=-1)
  xr = xr * jnp.cos(ang) + jnp.concatenate([-x2, x1], axis=-1) * jnp.sin(ang)
  return jnp.concatenate([xr, xp], axis=-1).reshape(b, t, n, dh).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head / grouped-query / multi-query self-attention."""
  cfg: BlockConfig
  causal: bool = True

  @nn.compact
  def __call__(self, x, positions):
    cfg = self.cfg
    h, kv, dh = cfg.num_heads, cfg.n_kv_heads, cfg.d_head
    dense = lambda shape, axes, name, role='': Linear(
        cfg, shape, ('embed',), axes, cfg.use_bias, role=role, name=name)
    q = dense((h, dh), ('heads', 'head_dim'), 'query', 'query')(x)
    k = dense((kv, dh), ('kv_heads', 'head_dim'), 'key')(x)
    v = dense((kv, dh), ('kv_heads', 'head_dim'), 'value')(x)
    if cfg.position == 'rope':
      q, k = apply_rope(q, positions, cfg), apply_rope(k, positions, cfg)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'act_heads', None))
    k = nn.with_logical_constraint(k, ('batch', 'length', 'act_kv_heads', None))
    v = nn.with_logical_constraint(v, ('batch', 'length', 'act_kv_heads', None))
    scale = cfg.attn_mult / (math.sqrt(dh) if cfg.attn_scale == 'sqrt' else dh)
    out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=self.causal,
                                       implementation=cfg.attention_impl)
    out = nn.with_logical_constraint(out, ('batch', 'length', 'act_heads', None))
    return Linear(cfg, (cfg.embed_dim,), ('heads', 'head_dim'), ('embed',), cfg.use_bias,
                  init_scale=_residual_scale(cfg), name='out')(out)


_ACTS = {'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
         'gelu': lambda x: jax.nn.gelu(x, approximate=False),
         'relu': jax.nn.relu, 'silu': jax.nn.silu}


def _residual_scale(cfg) -> float:
  """GPT-2's 1/sqrt(2L) on residual-output kernels (normal init only)."""
  if getattr(cfg, 'scale_residual_init', False) and cfg.init == 'normal':
    return 1.0 / math.sqrt(2 * cfg.num_layers)
  return 1.0


# Leaf paths (suffixes) of the kernels that get `_residual_scale`: the attention output and
# the MLP output projection, whatever block or scan prefix holds them.
RESIDUAL_OUTPUT_KERNELS = ('attn/out/kernel', 'mlp/wo/kernel')


def init_std(cfg: BlockConfig, path: str, fan_in_size: int) -> float:
  """The std `weight_init` draws the weight leaf at `path` with (its own init scale).

  Covers every leaf drawn by `weight_init` (kernels, embedding tables, the class
  token); gains (ones) and biases (zeros) have no std.  fan_in_size is the
  product of the leaf's fan-in dims (1 for none), used by cfg.init='fan_in'.
  """
  scale = _residual_scale(cfg) if path.endswith(RESIDUAL_OUTPUT_KERNELS) else 1.0
  if cfg.init == 'fan_in':
    return scale / math.sqrt(max(int(fan_in_size), 1))
  return cfg.init_std * scale


class MLP(nn.Module):
  """Plain (act(x Wi) Wo) or gated (act(x Wg) * (x Wu) Wo) feed-forward.

  The gated kernel is fused as (embed, 2, mlp): gate at index 0, up at 1.  The
  unnamed middle axis keeps gate and up apart under any widening of 'mlp'.
  """
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    act = _ACTS[cfg.activation]
    if cfg.gated_mlp:
      gu = Linear(cfg, (2, cfg.mlp_dim), ('embed',), (None, 'mlp'), cfg.use_bias, name='wi')(x)
      hdn = act(gu[..., 0, :]) * gu[..., 1, :]
    else:
      hdn = act(Linear(cfg, (cfg.mlp_dim,), ('embed',), ('mlp',), cfg.use_bias, name='wi')(x))
    hdn = nn.with_logical_constraint(hdn, ('batch', 'length', 'act_mlp'))
    return Linear(cfg, (cfg.embed_dim,), ('mlp',), ('embed',), cfg.use_bias,
                  init_scale=_residual_scale(cfg), name='wo')(hdn)


class Block(nn.Module):
  """Pre-norm transformer block (sequential or parallel residual).

  Returns (x, None) so it can be used directly as an `nn.scan` body.
  """
  cfg: BlockConfig
  causal: bool = True
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, positions):
    cfg = self.cfg
    drop = lambda y: cfg.residual_mult * nn.Dropout(cfg.dropout_rate)(
        y, deterministic=self.deterministic)
    a = Attention(cfg, self.causal, name='attn')(Norm(cfg, name='attn_norm')(x), positions)
    if cfg.parallel_residual:
      m = MLP(cfg, name='mlp')(Norm(cfg, name='mlp_norm')(x))
      x = x + drop(a) + drop(m)
    else:
      x = x + drop(a)
      x = x + drop(MLP(cfg, name='mlp')(Norm(cfg, name='mlp_norm')(x)))
    x = nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))
    return x, None


_REMAT_POLICIES = {'full': None, 'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def run_blocks(cfg: BlockConfig, x, positions, causal: bool = True, deterministic: bool = True):
  """Applies `num_layers` blocks inside the calling module's compact scope.

  Unrolled blocks are named block_0, block_1, ...; scanned ones share one
  'blocks' subtree whose leaves are stacked along a leading 'layers' axis.
  """
  block = Block
  if cfg.remat != 'none':
    block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    scanned = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                      in_axes=nn.broadcast, length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = scanned(cfg, causal, deterministic, name='blocks')(x, positions)
    return x
  for i in range(cfg.num_layers):
    x, _ = block(cfg, causal, deterministic, name=f'block_{i}')(x, positions)
  return x


def compute_dtype(cfg: BlockConfig) -> Any:
  return _dtype(cfg.dtype)
