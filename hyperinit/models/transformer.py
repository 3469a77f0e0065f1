"""Decoder-only causal language model covering GPT-2, OPT, GPT-NeoX, Llama, OLMo."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from hyperinit.models import layers
from hyperinit.models.config import TransformerConfig


class Transformer(nn.Module):
  """tokens [B, T] int -> logits [B, T, vocab] float32.

  Parameter tree (unscanned; scanned models hold one 'blocks' subtree whose
  leaves carry a leading 'layers' axis):
    token_embed/embedding (vocab, embed)   pos_embed/embedding (max_len+offset, embed)
    block_i/{attn_norm, attn/{query,key,value,out}, mlp_norm, mlp/{wi,wo}}
    final_norm/{scale,bias}                lm_head/kernel (embed, vocab) if untied
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, positions=None, deterministic: bool = True):
    cfg = self.cfg
    if tokens.ndim != 2:
      raise ValueError(f'tokens must have shape [batch, length], got {tokens.shape}')
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    embed = layers.Embed(cfg, cfg.vocab_size, 'vocab',
                         'tied_embedding' if cfg.tie_embeddings else 'embedding', name='token_embed')
    x = embed(tokens)
    if cfg.position == 'learned':
      if t > cfg.max_len:
        raise ValueError(f'sequence length {t} exceeds max_len={cfg.max_len}')
      x = x + layers.Embed(cfg, cfg.max_len + cfg.position_offset, 'position', 'position',
                           name='pos_embed')(positions + cfg.position_offset)
    x = x * cfg.embed_mult
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))
    x = layers.run_blocks(cfg, x, positions, True, deterministic)
    x = layers.Norm(cfg, role='final_norm', name='final_norm')(x)
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = layers.Linear(cfg, (cfg.vocab_size,), ('embed',), ('vocab',), False,
                             role='readout', name='lm_head')(x)
    logits = nn.with_logical_constraint(logits, ('batch', 'length', 'act_vocab'))
    return logits.astype(jnp.float32) * cfg.logits_mult
