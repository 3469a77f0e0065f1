"""The graph hypernetwork: encoder + decoder, and `predict` (GHN params -> target params).

    ghn_cfg = GHNConfig()                          # LoGAH, hidden 64, r 32, K 32768
    ghn_params = init(ghn_cfg, jax.random.key(0))
    params = predict(ghn_cfg, ghn_params, models.get_config('gpt2-large'))
    logits = models.build(cfg).apply({'params': params}, tokens)

Two entry points:
  `predict` (eager, streaming): the encoder runs once, then every leaf (or every
    scanned leaf, all layers at once) is decoded by its own jitted call and
    written into the output tree, so the peak memory is the target's bytes plus
    one leaf.  Not traceable (it reads the node codes on the host).
  `decode_params` (jittable, differentiable in the GHN params): leaves of one
    shape and kind decode in one batched call; inside jit / grad / eval_shape:

    params = decode_params(cfg, ghn_params, target_codes(cfg, ghn_params, target), target)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hyperinit import models
from hyperinit import spec as spec_lib
from hyperinit.logah import batching, decoders
from hyperinit.logah.encoder import GraphEncoder
from hyperinit.logah.graph import Graph, build_graph, is_scanned, slice_spec
from hyperinit.models.config import ModelConfig

DECODERS = ('logah', 'ghn3')


@dataclasses.dataclass(frozen=True)
class GHNConfig:
  """Hypernetwork hyper-parameters (frozen: usable as a jit static)."""
  decoder: str = 'logah'      # 'logah' (low-rank) | 'ghn3' (tiled chunks)
  hidden: int = 64            # node embedding width
  layers: int = 3             # Graphormer layers
  heads: int = 8              # Graphormer attention heads
  mlp_ratio: int = 4          # Graphormer MLP width / hidden
  rank: int = 32              # LoGAH rank r
  max_dim: int = 32768        # LoGAH K: widest dimension predicted without wrap-around
  chunk: int = 64             # GHN-3 chunk size c (weights are tiled c x c blocks)
  max_spd: int = 64           # shortest-path distances are clipped here
  max_degree: int = 16        # in/out degrees are clipped here
  normalize: str = 'init'     # 'init' (each leaf to its own init std) | 'fan_in' | 'std' | 'none';
                              # 'auto' (older saved GHNs) means 'init'
  beta: float = 2.0           # fan-in scaling gain of mode 'fan_in' (GHN-3: 2 for linear layers)
  std: float | None = None    # mode 'std': the one target std; None: the target's init_std

  def __post_init__(self):
    if self.decoder not in DECODERS:
      raise ValueError(f'GHN decoder {self.decoder!r} is not one of {DECODERS}')
    if self.normalize not in ('auto',) + decoders.NORM_MODES:
      raise ValueError(f'GHN normalize={self.normalize!r}; expected one of {decoders.NORM_MODES}')
    if self.hidden % self.heads:
      raise ValueError(f'GHN hidden={self.hidden} is not divisible by heads={self.heads}')

  def replace(self, **kw) -> 'GHNConfig':
    return dataclasses.replace(self, **kw)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'GHNConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'unknown GHNConfig fields {unknown}')
    return cls(**d)


class GHN(nn.Module):
  """Graph encoder + parameter decoder."""
  cfg: GHNConfig

  def setup(self):
    c = self.cfg
    self.encoder = GraphEncoder(c.hidden, c.layers, c.heads, c.mlp_ratio, c.max_spd, c.max_degree)
    if c.decoder == 'logah':
      self.decoder = decoders.LowRankDecoder(c.hidden, c.rank, c.max_dim)
    else:
      self.decoder = decoders.TiledDecoder(c.hidden, c.chunk)
    # Mode 'init': each predicted matrix's std is its leaf's init std times a gain predicted
    # from its node (decoders.bounded_gain of this head's output). Zero-init: every matrix
    # starts at its own init std. Without it the std is pinned, which caps e.g. an untied
    # readout's logits near init scale (a GPT GHN then plateaus at unigram loss).
    self.log_gain = nn.Dense(1, kernel_init=nn.initializers.zeros, name='log_gain')

  def encode(self, graphs: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """Padded batch -> node embeddings [G, M, hidden], mask [G, M]."""
    return self.encoder(graphs)

  def codes(self, graphs: jraph.GraphsTuple) -> dict[str, jax.Array]:
    """Padded batch -> per-node decoder codes, each [G, M, ...] (graph i is row i);
    'log_gain' [G, M] is the raw per-node gain (see `decoders.bounded_gain`)."""
    x, _ = self.encode(graphs)
    return {**self.decoder.codes(x), 'log_gain': self.log_gain(x)[..., 0]}

  def matrix(self, codes: dict, c_in: int, c_out: int) -> jax.Array:
    return self.decoder.matrix(codes, c_in, c_out)

  def factors(self, codes: dict, c_in: int, c_out: int, rows_in: jax.Array | None = None,
              rows_out: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """LoGAH only: (Bt [..., c_in, r], A [..., c_out, r]) with W = Bt @ A^T."""
    return self.decoder.factors(codes, c_in, c_out, rows_in, rows_out)

  def vector(self, codes: dict, kind: int, n: int, rows: jax.Array | None = None) -> jax.Array:
    if rows is None:
      return self.decoder.vector(codes, kind, n)
    return self.decoder.vector(codes, kind, n, rows)

  def __call__(self, graphs: jraph.GraphsTuple):
    x, _ = self.encode(graphs)
    return self.decoder(x[0, 0]), self.log_gain(x[0, 0])


def _dummy_batch() -> jraph.GraphsTuple:
  return batching.batch_graphs([build_graph(models.get_config('gpt2-tiny'))])


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: GHNConfig, rng: jax.Array, graphs: jraph.GraphsTuple) -> dict:
  return GHN(cfg).init(rng, graphs)['params']


def init(cfg: GHNConfig, rng: jax.Array) -> dict:
  """Fresh GHN params (the 'params' collection, a plain nested dict); jitted per config."""
  return _init(cfg, rng, _dummy_batch())


def param_shapes(cfg: GHNConfig) -> dict:
  """GHN param tree of ShapeDtypeStructs (no allocation)."""
  return jax.eval_shape(lambda k: GHN(cfg).init(k, _dummy_batch())['params'], jax.random.key(0))


def count_params(cfg: GHNConfig) -> int:
  return spec_lib.count(param_shapes(cfg))


def param_specs(cfg: GHNConfig) -> dict:
  """ParamSpec tree of the GHN's params, for `sharding.tree_shardings`.

  The GHN's leaves are small (the largest, LoGAH's r x K expansion, is 1M floats at the
  reference's K), so the one split worth having is ZeRO's: each leaf's largest dimension is
  named 'embed' (which the trainer's rules put on 'fsdp'; `mesh.rules='embed:'` replicates),
  the others are unnamed.  No fan-in or role: nothing else reads a GHN's specs.
  """
  def leaf(x):
    big = int(np.argmax(x.shape)) if x.shape else -1
    return spec_lib.ParamSpec(tuple('embed' if i == big else None for i in range(len(x.shape))))
  return jax.tree.map(leaf, param_shapes(cfg))


@functools.partial(jax.jit, static_argnums=0)
def encode(cfg: GHNConfig, params: dict, graphs: jraph.GraphsTuple) -> jax.Array:
  """Node embeddings [G, M, hidden] of a padded batch (row i = graph i)."""
  return GHN(cfg).apply({'params': params}, graphs, method=GHN.encode)[0]


@functools.partial(jax.jit, static_argnums=0)
def node_codes(cfg: GHNConfig, params: dict, graphs: jraph.GraphsTuple) -> dict[str, jax.Array]:
  """Per-node decoder codes {name: [G, M, ...]} of a padded batch (encoder + decoder MLPs)."""
  return GHN(cfg).apply({'params': params}, graphs, method=GHN.codes)


# --- per-leaf decoding ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LeafDecode:
  """Everything static about decoding one leaf (or one layer of a scanned leaf)."""
  shape: tuple[int, ...]      # the leaf's (per-layer) shape
  fan_in: tuple[int, ...]     # its fan-in dims (empty for vectors)
  kind: str                   # decoders.MATRIX_KINDS + decoders.VECTOR_KINDS
  mode: str                   # normalisation mode
  std: float                  # target std (mode 'init': the leaf's own init std)
  beta: float
  dtype: str
  permute_in: bool = False    # the fan-in side's axes are widths (channel permutation applies)
  permute_out: bool = False   # the fan-out side's (a vector's only side)

  @property
  def c_in(self) -> int:
    return math.prod(self.shape[i] for i in self.fan_in)

  @property
  def c_out(self) -> int:
    return math.prod(self.shape) // self.c_in


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  path: str
  nodes: tuple[int, ...]      # owning node per layer (one entry unless scanned)
  scanned: bool
  decode: LeafDecode


def leaf_kind(path: str, s: spec_lib.ParamSpec) -> str:
  """Decoder kind from the annotation (Flax's 'scale'/'bias' leaf names split gains from biases)."""
  if s.fan_in:
    return 'embed' if s.role in ('embedding', 'tied_embedding', 'position') else 'matrix'
  if s.role == 'cls_token':
    return 'vector'
  if path.endswith('scale'):
    return 'gain'
  if path.endswith('bias'):
    return 'bias'
  return 'vector'


def _is_width(axes: tuple) -> bool:
  """Whether dims with these logical axes are interchangeable channels (none fixed by data)."""
  return bool(axes) and all(a is not None and a not in spec_lib.FIXED_AXES for a in axes)


def channel_permutation(cfg: GHNConfig, key: jax.Array, rows: int | None = None) -> jax.Array:
  """A random permutation of LoGAH's K canonical channel rows, [K] int32, that shuffles the
  first `rows` of them (None: all K) and leaves the rest in place.

  Meta-training with `MetaConfig.permute_channels = rows` decodes each target through a fresh
  one (`decode_params(..., perm=...)`): every width axis (embed, heads, head_dim, mlp, ...;
  not vocab, positions, classes, pixels) reads its d channels from rows perm[:d] of the
  factors and W_K instead of rows 0..d-1.  Good networks stay good under any permutation of their
  hidden channels, so a decoder can meet this demand; what it changes is that every one of
  the K rows is trained, not only those below the pool's widest dimension, so a target wider
  than every pool member (rows 0..d-1 at prediction) reads trained rows.  `rows` bounds the
  cost in signal: each row is used by a d-wide side with probability d / rows (measured:
  shuffling all K = 512 rows kept a CPU ViT GHN at the uniform predictor for 2000 steps).
  """
  if cfg.decoder != 'logah':
    raise ValueError(f'channel permutation needs the LoGAH decoder (K rows), not {cfg.decoder!r}')
  k = cfg.max_dim
  rows = k if rows is None else int(rows)
  if not 1 <= rows <= k:
    raise ValueError(f'channel permutation of {rows} rows: expected 1 <= rows <= K = {k}')
  return jnp.concatenate([jax.random.permutation(key, rows), jnp.arange(rows, k)])


def norm_mode(ghn_cfg: GHNConfig) -> str:
  return 'init' if ghn_cfg.normalize == 'auto' else ghn_cfg.normalize


def _target_std(ghn_cfg: GHNConfig, target: ModelConfig, mode: str, path: str,
                s: spec_lib.ParamSpec, shape: tuple[int, ...]) -> float:
  """What a leaf's scale is normalised to: its own init std (mode 'init'), else one std."""
  if mode == 'init':
    return models.init_std(target, path, s, shape) if s.fan_in or s.role == 'cls_token' else 1.0
  return float(target.init_std if ghn_cfg.std is None else ghn_cfg.std)


@functools.lru_cache(maxsize=256)
def leaf_plans(ghn_cfg: GHNConfig, target: ModelConfig) -> tuple[LeafPlan, ...]:
  """How to decode every leaf of `target` (in params-tree flatten order)."""
  graph = build_graph(target)
  owner = graph.leaf_to_node()
  specs = spec_lib.flatten(models.param_specs(target), is_leaf=spec_lib.is_spec)
  shapes = spec_lib.flatten(models.param_shapes(target))
  mode = norm_mode(ghn_cfg)
  plans = []
  for path, s in specs.items():
    shape, dtype = tuple(shapes[path].shape), str(shapes[path].dtype)
    scanned = is_scanned(s)
    if scanned:
      nodes = tuple(owner[(path, i)] for i in range(shape[0]))
      s, shape = slice_spec(s), shape[1:]
    else:
      if (path, None) not in owner:
        raise ValueError(f'leaf {path!r} of {type(target).__name__} has no node in its graph')
      nodes = (owner[(path, None)],)
    kind = leaf_kind(path, s)
    std = _target_std(ghn_cfg, target, mode, path, s, shape)
    axes_in = tuple(s.axes[i] for i in s.fan_in)
    axes_out = tuple(s.axes[i] for i in s.fan_out)
    plans.append(LeafPlan(path, nodes, scanned,
                          LeafDecode(shape, s.fan_in, kind, mode, float(std), ghn_cfg.beta, dtype,
                                     _is_width(axes_in), _is_width(axes_out))))
  return tuple(plans)


def _rows(cfg: GHNConfig, perm: jax.Array | None, permute: bool, n: int) -> jax.Array | None:
  """The K-rows a width side of n channels reads under `perm` (None: rows 0..n-1)."""
  if perm is None or not permute:
    return None
  if n > cfg.max_dim:
    raise ValueError(f'channel permutation: a width dimension of {n} exceeds the GHN\'s '
                     f'K = max_dim = {cfg.max_dim}; use max_dim >= the widest width')
  return perm[:n]


def decode_leaf(cfg: GHNConfig, params: dict, codes: dict, d: LeafDecode,
                perm: jax.Array | None = None) -> jax.Array:
  """One node's codes (or L nodes' codes, leading dim L) -> the normalised leaf [(L,) *d.shape].

  perm: optional [K] channel permutation (`channel_permutation`, LoGAH only).
  """
  ghn = GHN(cfg)
  if perm is not None and cfg.decoder != 'logah':
    raise ValueError(f'channel permutation needs the LoGAH decoder, not {cfg.decoder!r}')
  if d.kind in decoders.MATRIX_KINDS:
    gain = decoders.bounded_gain(codes['log_gain'])
    scale = functools.partial(decoders.matrix_scale, d.kind, d.mode, fan_in=d.c_in, std=d.std,
                              beta=d.beta, gain=gain)
    if cfg.decoder == 'logah':
      # Normalise through the factors: the scale comes from r x r Gram matrices and the
      # leaf is formed once, already scaled (one leaf-sized buffer at GPT-2 Large's vocab).
      bt, a = ghn.apply({'params': params}, codes, d.c_in, d.c_out,
                        _rows(cfg, perm, d.permute_in, d.c_in),
                        _rows(cfg, perm, d.permute_out, d.c_out), method=GHN.factors)
      s = jnp.asarray(scale(moments=lambda: decoders.factor_moments(bt, a)))
      w = jnp.einsum('...ir,...or->...io', bt, a * s[..., None, None])
    else:
      w = ghn.apply({'params': params}, codes, d.c_in, d.c_out, method=GHN.matrix)
      s = jnp.asarray(scale(moments=lambda: decoders.array_moments(w, 2)))
      w = w * s[..., None, None]
    lead = w.shape[:-2]
    fan_out = tuple(i for i in range(len(d.shape)) if i not in d.fan_in)
    w = w.reshape(lead + tuple(d.shape[i] for i in d.fan_in + fan_out))
    # Fan-in dims were flattened first; move every dim back to its place.
    perm = np.argsort(d.fan_in + fan_out)
    w = jnp.transpose(w, tuple(range(len(lead))) + tuple(len(lead) + int(p) for p in perm))
  else:
    kind = decoders.VECTOR_KINDS.index(d.kind)
    n = math.prod(d.shape)
    w = ghn.apply({'params': params}, codes, kind, n, _rows(cfg, perm, d.permute_out, n),
                  method=GHN.vector)
    lead = w.shape[:-1]
    w = decoders.normalize(w, d.kind, d.mode, 1, d.std, d.beta).reshape(lead + d.shape)
  return w.astype(d.dtype)


_decode_leaf_jit = jax.jit(decode_leaf, static_argnums=(0, 3))


def decode_params(cfg: GHNConfig, params: dict, codes: dict, target: ModelConfig,
                  perm: jax.Array | None = None) -> dict:
  """Node codes {name: [M, ...]} of the target's graph -> the target's params tree (jittable).

  Leaves that share a shape and kind (e.g. every layer's query kernel) decode in one batched
  call and are sliced apart: few ops to trace and compile inside a jitted training step, at
  the price of one group's bytes held twice.  Pure and differentiable in `params`; the
  eager, streaming equivalent is `predict`.
  codes: `target_codes(cfg, params, target)`, or one graph's row of `node_codes`.
  perm: optional [K] channel permutation (`channel_permutation`; meta-training).
  """
  out: dict = {}
  groups: dict[LeafDecode, list[LeafPlan]] = {}
  for plan in leaf_plans(cfg, target):
    groups.setdefault(plan.decode, []).append(plan)
  for d, members in groups.items():
    idx = np.concatenate([np.asarray(p.nodes) for p in members])
    stacked = decode_leaf(cfg, params, jax.tree.map(lambda c: c[idx], codes), d, perm)
    start = 0
    for p in members:
      n = len(p.nodes)
      out[p.path] = stacked[start:start + n] if p.scanned else stacked[start]
      start += n
  return spec_lib.unflatten(out)


def target_codes(cfg: GHNConfig, params: dict, target: ModelConfig,
                 graph: Graph | None = None) -> dict[str, jax.Array]:
  """Per-node decoder codes {name: [M, ...]} of `target`'s graph (jittable)."""
  graph = graph or build_graph(target)
  return jax.tree.map(lambda c: c[0], node_codes(cfg, params, batching.batch_graphs([graph])))


def predict(cfg: GHNConfig, params: dict, target: ModelConfig, graph: Graph | None = None) -> dict:
  """GHN params -> params of `target` (exactly `models.param_shapes(target)`'s tree), eagerly.

  Streams: the node codes come to the host once, then each leaf (a scanned leaf: all its
  layers) is decoded by its own jitted call, so the peak memory is the output plus one leaf.
  Not traceable: under jit / grad / eval_shape use `decode_params` with `target_codes`.

  Args:
    cfg: the GHN's config.
    params: the GHN's params.
    target: any model config of the zoo (ViT or decoder LM, scanned or not).
    graph: its graph, if already built (`build_graph(target)` is cached anyway).
  Returns:
    a plain nested dict of arrays usable as `model.apply({'params': params}, x)`.
  """
  codes = jax.tree.map(np.asarray, target_codes(cfg, params, target, graph))
  out: dict = {}
  for plan in leaf_plans(cfg, target):
    idx = np.asarray(plan.nodes) if plan.scanned else plan.nodes[0]
    node = jax.tree.map(lambda c, idx=idx: c[idx], codes)
    out[plan.path] = _decode_leaf_jit(cfg, params, node, plan.decode, None)
  return spec_lib.unflatten(out)
