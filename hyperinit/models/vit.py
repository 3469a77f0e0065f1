"""Vision Transformer classifier (patch embedding, class token, learned positions)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from hyperinit.models import layers
from hyperinit.models.config import ViTConfig
from hyperinit.spec import annotated


class ViT(nn.Module):
  """images [B, H, W, C] float -> logits [B, num_classes] float32.

  Parameter tree:
    patch_embed/{kernel (p, p, C, embed), bias}   cls_token (embed,)
    pos_embed/embedding (1 + num_patches, embed)
    block_i/... (or scanned 'blocks')   final_norm/{scale,bias}   head/{kernel (embed, classes), bias}
  """
  cfg: ViTConfig

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    cfg = self.cfg
    want = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
      raise ValueError(f'images must have shape [batch, {want[0]}, {want[1]}, {want[2]}], '
                       f'got {images.shape}')
    b, p = images.shape[0], cfg.patch_size
    g = cfg.image_size // p
    # [B, H, W, C] -> [B, g*g, p, p, C]: row-major patches, as a stride-p conv sees them.
    x = images.reshape(b, g, p, g, p, cfg.num_channels).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, g * g, p, p, cfg.num_channels)
    x = layers.Linear(cfg, (cfg.embed_dim,), ('patch', 'patch', 'channels'), ('embed',), True,
                      name='patch_embed')(x)
    cls = self.param('cls_token', annotated(layers.weight_init(cfg), ('embed',), (), 'cls_token'),
                     (cfg.embed_dim,), jnp.dtype(cfg.param_dtype))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, cfg.embed_dim)), x], axis=1)
    positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32)[None], x.shape[:2])
    x = x + layers.Embed(cfg, cfg.num_patches + 1, 'position', 'position', name='pos_embed')(positions)
    x = x * cfg.embed_mult
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))
    x = layers.run_blocks(cfg, x, positions, False, deterministic)
    x = layers.Norm(cfg, role='final_norm', name='final_norm')(x)
    pooled = x[:, 0] if cfg.pool == 'cls' else jnp.mean(x[:, 1:], axis=1)
    # The muP output multiplier scales the readout's input (as microsoft/mup's MuReadout), so
    # the head bias keeps its width-independent learning rate.
    logits = layers.Linear(cfg, (cfg.num_classes,), ('embed',), ('classes',), True,
                           role='readout', name='head')(pooled * cfg.logits_mult)
    return logits.astype(jnp.float32)
