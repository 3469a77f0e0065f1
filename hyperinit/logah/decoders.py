"""Parameter decoders: node embedding -> weight matrix or vector, and the normalisations.

LoGAH low-rank decoder (the clean factorisation).  An MLP maps a node
embedding e [hidden] to a small matrix S [2r, r]; one shared linear map
(r -> K) expands each of its 2r rows, F = relu(S) @ W_K + b_K  [2r, K].  The
first r rows are A^T, the last r rows B, and a weight with fan-in c_in and
fan-out c_out is

    W [c_in, c_out] = B[:, :c_in]^T @ A^T[:, :c_out] / sqrt(r)      (rank <= r)

(the reference code reshapes F with a row-major `view` where this split and
transpose is meant).  Only the needed columns of W_K are touched, so a
1280 x 5120 kernel costs one [r, 1280] and one [r, 5120] product plus the
rank-r outer product.  Sizes above K reuse columns cyclically (index mod K),
which is what the reference does by tiling; choose K >= the widest dimension
to avoid it (see docs/logah.md).

Vectors (norm gains, biases, the class token) come from a small 1-D head that
predicts r coefficients per vector kind, expanded through the same W_K:
v = relu(a) @ W_K[:, :n] + b_K[:n]; no tiling up to K.

GHN-3 tiled decoder (baseline).  An MLP predicts one fixed chunk [c, c] per
node, tiled (index mod c) to any [c_in, c_out]; its 1-D head predicts a
chunk-long vector per kind, tiled likewise.  The last layer has 8*hidden*c^2
weights, so covering a d-wide layer without tiling costs O(d^2) per hidden
unit, i.e. ~d^2 * 512 at hidden 64.

Normalisation (`normalize`), per METHODS.md: vision kernels are scaled by
sqrt(beta / fan_in); language-model kernels and every embedding table are
rescaled to a target std (0.02); norm gains become 2 sigmoid(p / 2), biases
tanh(p / 5); the class token is rescaled to the target std.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

VECTOR_KINDS = ('gain', 'bias', 'vector')
MATRIX_KINDS = ('matrix', 'embed')
NORM_MODES = ('fan_in', 'std', 'none')


class MLP(nn.Module):
  """Dense layers with ReLU between; the last layer's init is scaled down by 5.

  The small last layer (as GHN-3's `_init_small`) starts predictions near zero,
  i.e. gains near 1 and biases near 0 after normalisation.
  """
  features: Sequence[int]

  @nn.compact
  def __call__(self, x):
    for i, f in enumerate(self.features):
      last = i == len(self.features) - 1
      init = nn.initializers.variance_scaling(1 / 25 if last else 1.0, 'fan_in', 'normal')
      x = nn.Dense(f, kernel_init=init, name=f'fc{i}')(x)
      if not last:
        x = nn.relu(x)
    return x


def cyclic_take(x: jax.Array, n: int, axis: int) -> jax.Array:
  """The first n entries of x along axis, wrapping around (index mod size) past its end."""
  size = x.shape[axis]
  if n <= size:
    return jax.lax.slice_in_dim(x, 0, n, axis=axis)
  return jnp.take(x, np.arange(n) % size, axis=axis)


class LowRankDecoder(nn.Module):
  """LoGAH decoder; see the module docstring.

  Two stages so that the MLPs run once per node, not once per leaf:
  `codes(e)` maps node embeddings to small per-node codes (S [2r, r] and the
  1-D head's coefficients [3, r]); `matrix` / `vector` expand one node's codes
  to a leaf through the shared r -> K map.
  """
  hidden: int = 64
  rank: int = 32
  max_dim: int = 32768

  def setup(self):
    r = self.rank
    self.mlp = MLP((4 * self.hidden, 8 * self.hidden, 2 * r * r))
    self.vec_head = MLP((2 * self.hidden, len(VECTOR_KINDS) * r))
    self.expand_kernel = self.param('expand_kernel', nn.initializers.lecun_normal(),
                                    (r, self.max_dim))
    self.expand_bias = self.param('expand_bias', nn.initializers.zeros, (self.max_dim,))

  def codes(self, e: jax.Array) -> dict[str, jax.Array]:
    """e [..., hidden] -> {'s': [..., 2, r, r], 'a': [..., 3, r]}."""
    r = self.rank
    return {'s': self.mlp(e).reshape(e.shape[:-1] + (2, r, r)),
            'a': self.vec_head(e).reshape(e.shape[:-1] + (len(VECTOR_KINDS), r))}

  def _expand(self, s: jax.Array, n: int) -> jax.Array:
    """relu(s) [..., m, r] -> [..., m, n] through the shared r -> K map."""
    w = cyclic_take(self.expand_kernel, n, axis=1)
    return nn.relu(s) @ w + cyclic_take(self.expand_bias, n, axis=0)

  def factors(self, codes: dict, c_in: int, c_out: int) -> tuple[jax.Array, jax.Array]:
    """-> (B [..., r, c_in], A^T [..., r, c_out])."""
    s = codes['s']
    return self._expand(s[..., 1, :, :], c_in), self._expand(s[..., 0, :, :], c_out)

  def matrix(self, codes: dict, c_in: int, c_out: int) -> jax.Array:
    """One node's codes -> W [..., c_in, c_out] of rank <= r."""
    b, at = self.factors(codes, c_in, c_out)
    return jnp.einsum('...ri,...ro->...io', b, at) * self.rank ** -0.5

  def vector(self, codes: dict, kind: int, n: int) -> jax.Array:
    """One node's codes -> v [..., n] for vector kind index `kind` (into VECTOR_KINDS)."""
    return self._expand(codes['a'][..., kind:kind + 1, :], n)[..., 0, :]

  def __call__(self, e):
    c = self.codes(e)
    return self.matrix(c, 2, 3), self.vector(c, 0, 3)


class TiledDecoder(nn.Module):
  """GHN-3 decoder: one [chunk, chunk] block per node, tiled to the target shape."""
  hidden: int = 64
  chunk: int = 64

  def setup(self):
    c = self.chunk
    self.mlp = MLP((4 * self.hidden, 8 * self.hidden, c * c))
    self.vec_head = MLP((2 * self.hidden, len(VECTOR_KINDS) * c))

  def codes(self, e: jax.Array) -> dict[str, jax.Array]:
    """e [..., hidden] -> {'w': [..., c, c], 'v': [..., 3, c]}."""
    c = self.chunk
    return {'w': self.mlp(e).reshape(e.shape[:-1] + (c, c)),
            'v': self.vec_head(e).reshape(e.shape[:-1] + (len(VECTOR_KINDS), c))}

  def matrix(self, codes: dict, c_in: int, c_out: int) -> jax.Array:
    """One node's codes -> W [..., c_in, c_out], the chunk repeated (index mod chunk)."""
    return cyclic_take(cyclic_take(codes['w'], c_in, axis=-2), c_out, axis=-1)

  def vector(self, codes: dict, kind: int, n: int) -> jax.Array:
    return cyclic_take(codes['v'][..., kind, :], n, axis=-1)

  def __call__(self, e):
    c = self.codes(e)
    return self.matrix(c, 2, 3), self.vector(c, 0, 3)


def _rescale_std(w: jax.Array, std: float, axes: tuple[int, ...]) -> jax.Array:
  return w * (std / (jnp.std(w, axis=axes, keepdims=True) + 1e-8))


def normalize(w: jax.Array, kind: str, mode: str, fan_in: int, std: float,
              beta: float = 1.0) -> jax.Array:
  """Normalises a raw prediction (per leaf; leading dims are independent layers).

  Args:
    w: [..., c_in, c_out] for MATRIX_KINDS, [..., n] for VECTOR_KINDS.
    kind: 'matrix' | 'embed' | 'gain' | 'bias' | 'vector'.
    mode: 'fan_in' (vision), 'std' (language models) or 'none'.
    fan_in: c_in, used by mode 'fan_in'.
    std: target std for 'std' mode, embedding tables and the class token.
    beta: gain of the fan-in scaling (2 for layers followed by ReLU in GHN-2).
  """
  if mode not in NORM_MODES:
    raise ValueError(f'normalisation mode {mode!r} is not one of {NORM_MODES}')
  if mode == 'none':
    return w
  if kind == 'gain':
    return 2.0 * jax.nn.sigmoid(0.5 * w)
  if kind == 'bias':
    return jnp.tanh(0.2 * w)
  if kind == 'vector':
    return _rescale_std(w, std, (-1,))
  if kind == 'embed' or mode == 'std':
    return _rescale_std(w, std, (-2, -1))
  if kind == 'matrix':
    return w * jnp.sqrt(beta / fan_in)
  raise ValueError(f'unknown leaf kind {kind!r}')
