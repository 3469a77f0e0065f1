"""Parameter decoders: node embedding -> weight matrix or vector, and the normalisations.

LoGAH low-rank decoder (the reference's layout, METHODS.md §3).  An MLP maps a
node embedding e [hidden] to a small matrix S [2r, r]; one shared linear map
(r -> K) expands each of its 2r rows, F = relu(S) @ W_K + b_K  [2r, K].  F is
then *reshaped* row-major to [2K, r] and split into A = rows [0, K) (fan-out
factor, from F's first r rows) and Bt = rows [K, 2K) (fan-in factor, from F's
last r rows).  A weight with fan-in c_in and fan-out c_out is

    W [c_in, c_out] = Bt[:c_in] @ A[:c_out]^T                      (rank <= r)

The reshape is what makes W a generic rank-r matrix: factor row i is the r
consecutive entries i*r .. i*r + r - 1 of F's flattened rows, i.e. its own
slice of W_K's columns.  (Taking the rows of relu(S[:r]) @ W_K as the factor
columns instead makes every factor row a non-negative mix of the same r rows
of W_K: nearly rank-1 matrices, top-1 energy share 0.8-0.98.)  Only the F
rows and W_K columns a leaf needs are computed: a c_out-row factor reads the
first ceil(c_out * r / K) rows of S's half.  Past K rows a factor wraps
around (row index mod K), what the reference does by tiling; choose K >= the
widest dimension to avoid it (see docs/logah.md).

Vectors (norm gains, biases, the class token) come from a small 1-D head that
predicts r coefficients per vector kind, expanded through the same W_K:
v = a @ W_K[:, :n] (no b_K, no relu: see `LowRankDecoder.vector`); no tiling up to K.

GHN-3 tiled decoder (baseline).  An MLP predicts one fixed chunk [c, c] per
node, tiled (index mod c) to any [c_in, c_out]; its 1-D head predicts a
chunk-long vector per kind, tiled likewise.  The last layer has 8*hidden*c^2
weights, so covering a d-wide layer without tiling costs O(d^2) per hidden
unit, i.e. ~d^2 * 512 at hidden 64.

Normalisation (`matrix_scale`, `normalize`): see their docstrings and
docs/logah.md ("Normalisation").  In the default mode 'init' a predicted
matrix is rescaled to the std of its own leaf's random init, so its scale does
not depend on the raw decoder output's scale at all.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

VECTOR_KINDS = ('gain', 'bias', 'vector')
MATRIX_KINDS = ('matrix', 'embed')
NORM_MODES = ('init', 'fan_in', 'std', 'none')
# Bound of the predicted log-gain of a matrix's std (mode 'init'): gains in [e^-3, e^3].
MAX_LOG_GAIN = 3.0


class MLP(nn.Module):
  """Dense layers with ReLU between; `small_last` divides the last layer's init by 5.

  The small last layer (GHN-3's `_init_small`) starts 1-D predictions near zero,
  i.e. gains near 1 and biases near 0 after normalisation.  The reference uses
  it for its 1-D head and GHN-3's tiled decoder, not for LoGAH's low-rank MLP.
  """
  features: Sequence[int]
  small_last: bool = True

  @nn.compact
  def __call__(self, x):
    for i, f in enumerate(self.features):
      last = i == len(self.features) - 1
      init = nn.initializers.variance_scaling(1 / 25 if last and self.small_last else 1.0,
                                              'fan_in', 'normal')
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


def _torch_linear_uniform(fan_in: int):
  """PyTorch nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (the reference's W_K, b_K)."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class LowRankDecoder(nn.Module):
  """LoGAH decoder; see the module docstring.

  Two stages so that the MLPs run once per node, not once per leaf:
  `codes(e)` maps node embeddings to small per-node codes (S [2, r, r] and the
  1-D head's coefficients [3, r]); `factors` / `matrix` / `vector` expand one
  node's codes to a leaf through the shared r -> K map.
  """
  hidden: int = 64
  rank: int = 32
  max_dim: int = 32768

  def setup(self):
    r = self.rank
    self.mlp = MLP((4 * self.hidden, 8 * self.hidden, 2 * r * r), small_last=False)
    self.vec_head = MLP((2 * self.hidden, len(VECTOR_KINDS) * r))
    self.expand_kernel = self.param('expand_kernel', _torch_linear_uniform(r), (r, self.max_dim))
    self.expand_bias = self.param('expand_bias', _torch_linear_uniform(r), (self.max_dim,))

  def codes(self, e: jax.Array) -> dict[str, jax.Array]:
    """e [..., hidden] -> {'s': [..., 2, r, r] (A's half, Bt's half), 'a': [..., 3, r]}."""
    r = self.rank
    return {'s': self.mlp(e).reshape(e.shape[:-1] + (2, r, r)),
            'a': self.vec_head(e).reshape(e.shape[:-1] + (len(VECTOR_KINDS), r))}

  def _factor(self, s: jax.Array, n: int, rows: jax.Array | None = None) -> jax.Array:
    """One half of S [..., r, r] -> n rows of its factor [..., n, r].

    Row i is entries [i*r, (i+1)*r) of the row-major flattening of
    F = relu(s) @ W_K + b_K [r, K].  rows=None: rows 0..n-1 (past K they wrap
    around).  rows [n] int (each < K): those rows, in that order (a channel
    permutation, `ghn.channel_permutation`); the whole [K, r] factor is formed, O(K r) per node.
    """
    r, k = self.rank, self.max_dim
    if rows is not None:
      full = nn.relu(s) @ self.expand_kernel + self.expand_bias
      return jnp.take(full.reshape(full.shape[:-2] + (k, r)), rows, axis=-2)
    rows = min(n, k)
    flat = rows * r                       # entries of F's flattening that are used
    m = -(-flat // k)                     # rows of F they span
    cols = min(flat, k)                   # and columns (all K once m > 1)
    f = nn.relu(s[..., :m, :]) @ self.expand_kernel[:, :cols] + self.expand_bias[:cols]
    lead = f.shape[:-2]
    f = f.reshape(lead + (m * cols,))[..., :flat].reshape(lead + (rows, r))
    return cyclic_take(f, n, axis=-2)

  def factors(self, codes: dict, c_in: int, c_out: int, rows_in: jax.Array | None = None,
              rows_out: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """-> (Bt [..., c_in, r], A [..., c_out, r]); W = Bt @ A^T.  rows_*: see `_factor`."""
    s = codes['s']
    return (self._factor(s[..., 1, :, :], c_in, rows_in),
            self._factor(s[..., 0, :, :], c_out, rows_out))

  def matrix(self, codes: dict, c_in: int, c_out: int) -> jax.Array:
    """One node's codes -> W [..., c_in, c_out] of rank <= r."""
    bt, a = self.factors(codes, c_in, c_out)
    return jnp.einsum('...ir,...or->...io', bt, a)

  def vector(self, codes: dict, kind: int, n: int, rows: jax.Array | None = None) -> jax.Array:
    """One node's codes -> v [..., n] for vector kind index `kind` (into VECTOR_KINDS).

    rows [n] int (each < K): entry i is read from W_K's column rows[i] instead of i
    (a channel permutation, `ghn.channel_permutation`).

    v = a @ W_K[:, :n]: a linear mix of W_K's rows, with neither b_K nor a relu.  b_K is
    shared by every vector of every node: with it every bias and gain of a predicted
    network carries the same offset (measured after meta-training: every bias leaf the same
    vector, std 0.13, a constant that dominates a GPT's residual stream, so the predicted
    LM ignores its input and sits at the unigram loss).  a starts near 0 (small last
    layer): gains near 1 and biases near 0, as at random init.
    """
    if rows is not None:
      return codes['a'][..., kind, :] @ jnp.take(self.expand_kernel, rows, axis=1)
    return codes['a'][..., kind, :] @ cyclic_take(self.expand_kernel, n, axis=1)

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


# --- normalisation ---------------------------------------------------------------------

def bounded_gain(raw: jax.Array) -> jax.Array:
  """exp(MAX_LOG_GAIN * tanh(raw / MAX_LOG_GAIN)): a node's predicted std multiplier.

  ~exp(raw) near 0 (1 at a zero-init head) and bounded to [e^-3, e^3], so an
  unseen (deeper, wider) target's nodes cannot extrapolate to an exploding scale.
  """
  return jnp.exp(MAX_LOG_GAIN * jnp.tanh(raw / MAX_LOG_GAIN))


def factor_moments(bt: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, variance) over the last two dims of W = Bt @ A^T, without forming W.

  bt [..., c_in, r], a [..., c_out, r] -> two [...] arrays.  sum W = (1^T Bt)(A^T 1)
  and sum W^2 = <Bt^T Bt, A^T A> (r x r Gram matrices): O((c_in + c_out) r^2), so
  normalising GPT-2 Large's 50257 x 1280 embedding holds one leaf-sized buffer, not two.
  """
  n = bt.shape[-2] * a.shape[-2]
  total = jnp.einsum('...r,...r->...', bt.sum(-2), a.sum(-2))
  sq = jnp.einsum('...rs,...rs->...', jnp.einsum('...ir,...is->...rs', bt, bt),
                  jnp.einsum('...or,...os->...rs', a, a))
  mean = total / n
  return mean, jnp.maximum(sq / n - mean ** 2, 0.0)


def array_moments(w: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
  """(mean, variance) of w over its last `ndim` dims."""
  axes = tuple(range(-ndim, 0))
  return jnp.mean(w, axis=axes), jnp.var(w, axis=axes)


def matrix_scale(kind: str, mode: str, *, fan_in: int, std: float, beta: float,
                 gain: jax.Array | float, moments: Callable[[], tuple[jax.Array, jax.Array]]):
  """The factor a raw predicted matrix [..., c_in, c_out] is multiplied by ([...] or scalar).

  Modes:
    'init'   rescale to std * `gain`: `std` is the leaf's own random init's (GPT-2:
             0.02, residual output projections 0.02 / sqrt(2L)), `gain` the GHN's
             per-node prediction (`bounded_gain`; 1 at GHN init), so the GHN can
             grow a readout or a table as training would.  The raw decoder scale
             cancels.  The default, for ViTs and LMs.
    'std'    the reference's GPT rule: every matrix and table rescaled to `std`.
    'fan_in' the reference's vision rule: kernels * sqrt(beta / fan_in), tables
             left raw (GHN-3 does not normalise positional encodings).
    'none'   raw.
  `moments()` gives the (mean, variance) of the raw matrix; it is called only
  by the modes that need it.
  """
  if mode == 'none' or (mode == 'fan_in' and kind == 'embed'):
    return 1.0
  if mode == 'fan_in':
    return float(np.sqrt(beta / fan_in))
  if mode not in ('init', 'std'):
    raise ValueError(f'normalisation mode {mode!r} is not one of {NORM_MODES}')
  _, var = moments()
  target = std * gain if mode == 'init' else std
  return target / (jnp.sqrt(var) + 1e-8)


def normalize(w: jax.Array, kind: str, mode: str, fan_in: int, std: float,
              beta: float = 2.0, gain: jax.Array | float = 1.0) -> jax.Array:
  """Normalises a raw prediction (per leaf; leading dims are independent layers).

  Args:
    w: [..., c_in, c_out] for MATRIX_KINDS, [..., n] for VECTOR_KINDS.
    kind: 'matrix' | 'embed' | 'gain' | 'bias' | 'vector' (the class token).
    mode: see `matrix_scale`; for vectors every mode but 'none' maps gains to
      2 sigmoid(p / 2) and biases to tanh(p / 5) (the reference), and modes
      'init' / 'std' rescale the class token to `std`.
    fan_in: c_in, used by mode 'fan_in'.
    std: the leaf's target std (its own init std in mode 'init').
    beta: gain of the fan-in scaling (GHN-3: 2 for linear layers).
    gain: the predicted multiplier of the std in mode 'init' (`bounded_gain`).
  """
  if mode not in NORM_MODES:
    raise ValueError(f'normalisation mode {mode!r} is not one of {NORM_MODES}')
  if kind in MATRIX_KINDS:
    scale = matrix_scale(kind, mode, fan_in=fan_in, std=std, beta=beta, gain=gain,
                         moments=lambda: array_moments(w, 2))
    return w * jnp.asarray(scale)[..., None, None]
  if kind not in VECTOR_KINDS:
    raise ValueError(f'unknown leaf kind {kind!r}')
  if mode == 'none':
    return w
  if kind == 'gain':
    return 2.0 * jax.nn.sigmoid(0.5 * w)
  if kind == 'bias':
    return jnp.tanh(0.2 * w)
  if mode == 'fan_in':
    return w
  return w * (std / (jnp.std(w, axis=-1, keepdims=True) + 1e-8))
