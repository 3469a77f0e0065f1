"""Graphormer encoder over padded dense graphs (Flax linen).

Node embedding = op-type embedding + embeddings of the binned shapes (c_out,
c_in, k) + argument-slot embedding + in/out-degree embeddings + an embedding
of the distance from the input node.  Shape bins and distances are embedded
smoothly (`SmoothEmbed`: sinusoids of the code through a learned linear map),
so a held-out target's unseen sizes and depths land next to trained ones.
Every layer is a pre-LN Transformer layer over all node pairs of a graph
whose attention logits get a per-head bias looked up from the shortest-path
distances in both directions; the bias table is computed once (as in GHN-3,
where only the first layer embeds edges) and shared by all layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hyperinit.logah import batching
from hyperinit.logah.graph import NUM_SLOTS, OPS


def distance_codes(spd: jax.Array, max_spd: int) -> jax.Array:
  """0 for unreachable (spd < 0), else 1 + min(spd, max_spd); int32 like spd."""
  return jnp.where(spd < 0, 0, 1 + jnp.minimum(spd, max_spd))


class SmoothEmbed(nn.Module):
  """Embedding of an ordered integer code (a size bin, a distance), smooth in the code.

  Fixed sinusoids of the code (periods `min_period` * 2^i, i < `num`) through a
  learned linear map.  A lookup table leaves every code that training never saw
  at its random init, and a held-out target that is wider or deeper than the
  pool has such codes (new size bins, longer distances): its nodes then get
  random embeddings and its prediction is garbage (measured: a ViT GHN whose pool
  accuracy rose to 34% predicted a held-out 6 x 128 ViT at 8%, loss 3.9, worse than
  chance).  Here nearby codes get nearby embeddings, seen or not.
  """
  features: int
  min_period: float = 8.0
  num: int = 8

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    freqs = 2 * np.pi / (self.min_period * 2.0 ** np.arange(self.num))
    x = ids.astype(jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)
    feats = jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)      # sum of squares = num
    # Output coordinates of std features^-0.5, as the tables' normal(hidden^-0.5) init.
    init = nn.initializers.normal((self.features * self.num) ** -0.5)
    return nn.Dense(self.features, use_bias=False, kernel_init=init, name='proj')(feats)


class EdgeBias(nn.Module):
  """Per-head attention bias from (forward, backward) shortest-path distances.

  An MLP maps every pair (embedding of the forward code, embedding of the
  backward code) to one logit bias per head; the (C x C x heads) table is
  computed once per call (C = max_spd + 2, tiny) and gathered, so the cost is
  independent of the graph size apart from the gather.
  """
  hidden: int
  heads: int
  max_spd: int

  @nn.compact
  def __call__(self, spd: jax.Array) -> jax.Array:
    """spd: int32 [G, M, M] -> bias float32 [G, heads, M, M]."""
    c = self.max_spd + 2
    table = SmoothEmbed(self.hidden, name='spd_embed')(jnp.arange(c))            # [C, H]
    w_fwd = nn.Dense(self.hidden, use_bias=False, name='proj_fwd')(table)    # [C, H]
    w_bwd = nn.Dense(self.hidden, use_bias=True, name='proj_bwd')(table)     # [C, H]
    hid = nn.relu(w_fwd[:, None, :] + w_bwd[None, :, :])                       # [C, C, H]
    pair = nn.Dense(self.heads, name='to_heads')(hid).reshape(c * c, self.heads)
    fwd = distance_codes(spd, self.max_spd)
    bwd = jnp.swapaxes(fwd, 1, 2)
    bias = jnp.take(pair, fwd * c + bwd, axis=0)                               # [G, M, M, heads]
    return jnp.transpose(bias, (0, 3, 1, 2))


class GraphormerLayer(nn.Module):
  """Pre-LN self-attention over all node pairs + MLP, with additive logit bias."""
  hidden: int
  heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
    """x [G, M, H], bias [G, heads, M, M], mask bool [G, M] -> [G, M, H]."""
    dh = self.hidden // self.heads
    h = nn.LayerNorm(epsilon=1e-5, name='ln1')(x)
    qkv = nn.DenseGeneral((3, self.heads, dh), use_bias=False, name='qkv')(h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]                     # [G, M, heads, dh]
    logits = jnp.einsum('gqhd,gkhd->ghqk', q, k) * dh ** -0.5 + bias
    logits = jnp.where(mask[:, None, None, :], logits, -1e9)
    attn = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum('ghqk,gkhd->gqhd', attn, v)
    x = x + nn.DenseGeneral(self.hidden, axis=(-2, -1), name='out')(out)
    h = nn.LayerNorm(epsilon=1e-5, name='ln2')(x)
    h = nn.Dense(self.hidden * self.mlp_ratio, name='fc1')(h)
    h = nn.Dense(self.hidden, name='fc2')(nn.gelu(h))
    return x + h


class GraphEncoder(nn.Module):
  """Padded jraph batch -> node embeddings [G, M, hidden] and node mask [G, M]."""
  hidden: int = 64
  layers: int = 3
  heads: int = 8
  mlp_ratio: int = 4
  max_spd: int = 64
  max_degree: int = 16

  @nn.compact
  def __call__(self, graphs: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    if self.hidden % self.heads:
      raise ValueError(f'GHN hidden={self.hidden} is not divisible by heads={self.heads}')
    feat, mask, in_deg, out_deg, spd = batching.to_dense(graphs)
    init = nn.initializers.normal(self.hidden ** -0.5)
    embed = lambda n, name, ids: nn.Embed(n, self.hidden, embedding_init=init, name=name)(ids)
    deg = lambda d: jnp.minimum(d, self.max_degree)
    smooth = lambda name, ids: SmoothEmbed(self.hidden, name=name)(ids)
    # Categorical features get tables; sizes and distances, which a held-out target extends
    # beyond the pool's range, get smooth embeddings (SmoothEmbed).
    x = (embed(len(OPS), 'op_embed', feat[..., 0])
         + smooth('c_out_embed', feat[..., 1])
         + smooth('c_in_embed', feat[..., 2])
         + smooth('k_embed', feat[..., 3])
         + embed(NUM_SLOTS, 'slot_embed', feat[..., 4])
         + embed(self.max_degree + 1, 'in_degree_embed', deg(in_deg))
         + embed(self.max_degree + 1, 'out_degree_embed', deg(out_deg))
         # Node 0 of every graph is its input node.
         + smooth('input_dist_embed', distance_codes(spd[:, 0, :], self.max_spd)))
    x = x * mask[..., None]
    bias = EdgeBias(self.hidden, self.heads, self.max_spd, name='edge_bias')(spd)
    for i in range(self.layers):
      x = GraphormerLayer(self.hidden, self.heads, self.mlp_ratio, name=f'layer_{i}')(x, bias, mask)
    return nn.LayerNorm(epsilon=1e-5, name='ln_out')(x), mask
