"""Computational graphs of our models, built from the config (not by tracing).

One node per operation of the forward pass (linear, norm, embedding, attention
softmax 'msa', residual sum, gate multiply, ...), edges along the data flow,
and for every node the parameter leaves it owns.  The node order is a
topological order (every edge goes from a lower to a higher index), which the
shortest-path computation relies on.

    g = build_graph(models.get_config('gpt2-tiny'))
    g.num_nodes, g.num_edges          # 30, 38
    g.leaves[g.index('block_0/attn/query')]   # (('block_0/attn/query/kernel', None), (..bias, None))
    g.spd[i, j]                       # forward shortest-path distance i -> j, -1 if unreachable

Node features (`Graph.features`, int32 [N, 5]): op-type id, binned c_out,
binned c_in, binned k (heads / patch size / the gate pair), and the argument
slot the node feeds in a non-commutative consumer (q/k/v of attention, gate/up
of a gated MLP).  Sizes are binned at quarter-octave resolution, so every width
from 1 to 2^17 (GPT-2 XL, Llama-7B, a 50k vocabulary) has its own bin.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np

from hyperinit import spec as spec_lib
from hyperinit.models.config import ModelConfig, TransformerConfig, ViTConfig

# Op vocabulary.  Index 0 is reserved for padding nodes.
OPS = ('pad', 'input', 'embedding', 'pos_embed', 'patch_embed', 'cls_token', 'concat', 'sum',
       'layernorm', 'rmsnorm', 'layernorm_nonparam', 'linear', 'rope', 'msa',
       'gelu', 'gelu_tanh', 'relu', 'silu', 'mul', 'pool_cls', 'pool_mean', 'readout_tied')
OP_ID = {name: i for i, name in enumerate(OPS)}

# Shape bins: 0 = absent, else 1 + round(4 * log2(size)), clipped.
BINS_PER_OCTAVE = 4
MAX_LOG2 = 17
NUM_BINS = 2 + BINS_PER_OCTAVE * MAX_LOG2
NUM_SLOTS = 4  # 0: commutative/none, 1..3: first..third argument of msa / mul

LeafRef = tuple[str, int | None]  # (path in the params tree, layer index into a scanned leaf)


def size_bin(size: np.ndarray | int) -> np.ndarray:
  """Quarter-octave bin of a size (0 for size <= 0); int32 array like `size`."""
  s = np.asarray(size, dtype=np.float64)
  b = 1 + np.rint(BINS_PER_OCTAVE * np.log2(np.maximum(s, 1.0)))
  return np.where(s > 0, np.minimum(b, NUM_BINS - 1), 0).astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
  """A model's computational graph (numpy arrays; N nodes, E edges).

  Attributes:
    cfg: the model config it was built from.
    names: node names, e.g. 'block_3/mlp/wi' or 'block_3/sum_attn'  [N].
    ops: op-type ids into `OPS`, int32 [N].
    shapes: (c_out, c_in, k) per node, int64 [N, 3]; 0 where absent.
    slots: argument slot into a non-commutative consumer, int32 [N].
    senders, receivers: edge endpoints, int32 [E] (senders < receivers).
    spd: forward shortest-path distances, int32 [N, N]; spd[i, j] = hops
      i -> j, 0 on the diagonal, -1 if j is not reachable from i.  The
      backward distances are `spd.T`.
    leaves: per node, the parameter leaves it owns as (path, layer) pairs;
      layer is the index into the leading 'layers' axis of a scanned leaf.
  """
  cfg: ModelConfig
  names: tuple[str, ...]
  ops: np.ndarray
  shapes: np.ndarray
  slots: np.ndarray
  senders: np.ndarray
  receivers: np.ndarray
  spd: np.ndarray
  leaves: tuple[tuple[LeafRef, ...], ...]

  @property
  def num_nodes(self) -> int:
    return len(self.names)

  @property
  def num_edges(self) -> int:
    return len(self.senders)

  @functools.cached_property
  def _index(self) -> dict[str, int]:
    return {n: i for i, n in enumerate(self.names)}

  def index(self, name: str) -> int:
    """Node index of a node name; KeyError names the graph's nodes on a miss."""
    try:
      return self._index[name]
    except KeyError:
      raise KeyError(f'no node {name!r}; nodes are {list(self.names)[:12]}...') from None

  @property
  def features(self) -> np.ndarray:
    """int32 [N, 5]: op id, bin(c_out), bin(c_in), bin(k), slot."""
    return np.concatenate([self.ops[:, None], size_bin(self.shapes), self.slots[:, None]],
                          axis=1).astype(np.int32)

  def in_degree(self) -> np.ndarray:
    return np.bincount(self.receivers, minlength=self.num_nodes)

  def out_degree(self) -> np.ndarray:
    return np.bincount(self.senders, minlength=self.num_nodes)

  def leaf_to_node(self) -> dict[LeafRef, int]:
    """{(path, layer): node index}; raises if a leaf is owned by two nodes."""
    out: dict[LeafRef, int] = {}
    for i, refs in enumerate(self.leaves):
      for ref in refs:
        if ref in out:
          raise ValueError(f'leaf {ref} is mapped to nodes {self.names[out[ref]]!r} and '
                           f'{self.names[i]!r}; each leaf must have exactly one node')
        out[ref] = i
    return out


def shortest_paths(num_nodes: int, senders: np.ndarray, receivers: np.ndarray) -> np.ndarray:
  """All-pairs forward hop distances of a DAG whose edges satisfy senders < receivers.

  Dynamic programming in topological order: column v is 1 + the minimum over
  v's predecessors' columns.  O(E * N) work in N vectorised column updates.

  Returns:
    int32 [N, N]; d[i, j] = hops from i to j, 0 on the diagonal, -1 if unreachable.
  """
  senders = np.asarray(senders, np.int64)
  receivers = np.asarray(receivers, np.int64)
  if np.any(senders >= receivers):
    bad = int(np.argmax(senders >= receivers))
    raise ValueError(f'edge {senders[bad]} -> {receivers[bad]} is not in topological order')
  inf = np.int32(np.iinfo(np.int32).max // 2)
  # Fortran order: the DP reads and writes whole columns.
  dist = np.full((num_nodes, num_nodes), inf, dtype=np.int32, order='F')
  np.fill_diagonal(dist, 0)
  order = np.argsort(receivers, kind='stable')
  recv_sorted, send_sorted = receivers[order], senders[order]
  starts = np.searchsorted(recv_sorted, np.arange(num_nodes + 1))
  for v in range(num_nodes):
    preds = send_sorted[starts[v]:starts[v + 1]]
    if preds.size:
      col = dist[:, preds].min(axis=1) + 1
      np.minimum(dist[:, v], col, out=dist[:, v])
  dist[dist >= inf] = -1
  return np.ascontiguousarray(dist)


class _Builder:
  """Accumulates nodes and edges in topological order."""

  def __init__(self, cfg: ModelConfig):
    self.cfg = cfg
    self.names: list[str] = []
    self.ops: list[int] = []
    self.shapes: list[tuple[int, int, int]] = []
    self.slots: list[int] = []
    self.leaves: list[tuple[LeafRef, ...]] = []
    self.senders: list[int] = []
    self.receivers: list[int] = []
    self.layer: int | None = None   # set inside a scanned block
    self.prefix = ''                # 'block_3/' or 'blocks/'

  def node(self, name: str, op: str, inputs: Sequence[int] = (), shape=(0, 0, 0),
           leaves: Sequence[str] = (), slot: int = 0) -> int:
    i = len(self.names)
    self.names.append(name)
    self.ops.append(OP_ID[op])
    self.shapes.append(tuple(int(s) for s in shape))
    self.slots.append(slot)
    self.leaves.append(tuple((p, self.layer if p.startswith('blocks/') else None) for p in leaves))
    for j in inputs:
      self.senders.append(j)
      self.receivers.append(i)
    return i

  def linear(self, name: str, x: int, in_dims: Sequence[int], out_dims: Sequence[int],
             bias: bool, slot: int = 0, op: str = 'linear') -> int:
    """A kernel of shape in_dims + out_dims (fan-in first) and an optional bias."""
    c_in, c_out = math.prod(in_dims), math.prod(out_dims)
    k = out_dims[0] if len(out_dims) > 1 else (in_dims[0] if len(in_dims) > 1 else 0)
    leaves = [f'{name}/kernel'] + ([f'{name}/bias'] if bias else [])
    return self.node(name, op, [x], (c_out, c_in, k), leaves, slot)

  def norm(self, name: str, x: int, width: int) -> int:
    kind = self.cfg.norm
    leaves = {'layernorm': ('scale', 'bias'), 'rmsnorm': ('scale',), 'layernorm_nonparam': ()}[kind]
    return self.node(name, kind, [x], (width, 0, 0), [f'{name}/{p}' for p in leaves])

  def build(self) -> Graph:
    n = len(self.names)
    senders = np.asarray(self.senders, np.int32)
    receivers = np.asarray(self.receivers, np.int32)
    return Graph(cfg=self.cfg, names=tuple(self.names), ops=np.asarray(self.ops, np.int32),
                 shapes=np.asarray(self.shapes, np.int64).reshape(n, 3),
                 slots=np.asarray(self.slots, np.int32), senders=senders, receivers=receivers,
                 spd=shortest_paths(n, senders, receivers), leaves=tuple(self.leaves))


def _block(b: _Builder, x: int, p: str) -> int:
  """One pre-norm transformer block (mirrors `models.layers.Block`); returns its output node."""
  cfg = b.cfg
  d, h, kv, dh, f = cfg.embed_dim, cfg.num_heads, cfg.n_kv_heads, cfg.d_head, cfg.mlp_dim
  bias = cfg.use_bias
  n1 = b.norm(f'{p}attn_norm', x, d)
  q = b.linear(f'{p}attn/query', n1, (d,), (h, dh), bias, slot=1)
  k = b.linear(f'{p}attn/key', n1, (d,), (kv, dh), bias, slot=2)
  v = b.linear(f'{p}attn/value', n1, (d,), (kv, dh), bias, slot=3)
  if cfg.position == 'rope':
    q = b.node(f'{p}attn/rope_q', 'rope', [q], (h * dh, 0, h), slot=1)
    k = b.node(f'{p}attn/rope_k', 'rope', [k], (kv * dh, 0, kv), slot=2)
  a = b.node(f'{p}attn/msa', 'msa', [q, k, v], (h * dh, 0, h))
  o = b.linear(f'{p}attn/out', a, (h, dh), (d,), bias)

  def mlp(y: int) -> int:
    if cfg.gated_mlp:
      wi = b.linear(f'{p}mlp/wi', y, (d,), (2, f), bias)
      g = b.node(f'{p}mlp/act', cfg.activation, [wi], (f, 0, 0), slot=1)
      hid = b.node(f'{p}mlp/mul', 'mul', [g, wi], (f, 0, 0))
    else:
      wi = b.linear(f'{p}mlp/wi', y, (d,), (f,), bias)
      hid = b.node(f'{p}mlp/act', cfg.activation, [wi], (f, 0, 0))
    return b.linear(f'{p}mlp/wo', hid, (f,), (d,), bias)

  if cfg.parallel_residual:
    m = mlp(b.norm(f'{p}mlp_norm', x, d))
    return b.node(f'{p}sum', 'sum', [x, o, m], (d, 0, 0))
  s1 = b.node(f'{p}sum_attn', 'sum', [x, o], (d, 0, 0))
  m = mlp(b.norm(f'{p}mlp_norm', s1, d))
  return b.node(f'{p}sum_mlp', 'sum', [s1, m], (d, 0, 0))


def _blocks(b: _Builder, x: int) -> int:
  for i in range(b.cfg.num_layers):
    if b.cfg.scan_layers:
      b.layer, p = i, 'blocks/'
      x = _block(b, x, p)
      # Scanned leaves are shared paths; node names still need the layer.
      n_new = len(b.names)
      for j in range(n_new - 1, -1, -1):
        if not b.names[j].startswith('blocks/'):
          break
        b.names[j] = f'block_{i}/' + b.names[j][len('blocks/'):]
    else:
      b.layer = None
      x = _block(b, x, f'block_{i}/')
  b.layer = None
  return x


def _transformer(cfg: TransformerConfig) -> Graph:
  b = _Builder(cfg)
  d = cfg.embed_dim
  inp = b.node('input', 'input', shape=(cfg.vocab_size, 0, 0))
  x = b.node('token_embed', 'embedding', [inp], (d, cfg.vocab_size, 0), ['token_embed/embedding'])
  if cfg.position == 'learned':
    n_pos = cfg.max_len + cfg.position_offset
    pos = b.node('pos_embed', 'pos_embed', [inp], (d, n_pos, 0), ['pos_embed/embedding'])
    x = b.node('embed_sum', 'sum', [x, pos], (d, 0, 0))
  x = _blocks(b, x)
  x = b.norm('final_norm', x, d)
  if cfg.tie_embeddings:
    b.node('readout', 'readout_tied', [x], (cfg.vocab_size, d, 0))
  else:
    b.linear('lm_head', x, (d,), (cfg.vocab_size,), False)
  return b.build()


def _vit(cfg: ViTConfig) -> Graph:
  b = _Builder(cfg)
  d, p, c = cfg.embed_dim, cfg.patch_size, cfg.num_channels
  inp = b.node('input', 'input', shape=(c, 0, cfg.image_size))
  patches = b.linear('patch_embed', inp, (p, p, c), (d,), True, op='patch_embed')
  cls = b.node('cls_token', 'cls_token', [inp], (d, 0, 0), ['cls_token'])
  x = b.node('concat', 'concat', [cls, patches], (d, 0, 0))
  pos = b.node('pos_embed', 'pos_embed', [inp], (d, cfg.num_patches + 1, 0), ['pos_embed/embedding'])
  x = b.node('embed_sum', 'sum', [x, pos], (d, 0, 0))
  x = _blocks(b, x)
  x = b.norm('final_norm', x, d)
  x = b.node('pool', 'pool_cls' if cfg.pool == 'cls' else 'pool_mean', [x], (d, 0, 0))
  b.linear('head', x, (d,), (cfg.num_classes,), True)
  return b.build()


@functools.lru_cache(maxsize=256)
def build_graph(cfg: ModelConfig) -> Graph:
  """The computational graph of a model config (cached; configs are frozen)."""
  if isinstance(cfg, ViTConfig):
    return _vit(cfg)
  if isinstance(cfg, TransformerConfig):
    return _transformer(cfg)
  raise TypeError(f'expected a TransformerConfig or ViTConfig, got {type(cfg).__name__}')


def check_leaf_mapping(graph: Graph, specs, shapes) -> None:
  """Raises ValueError unless every parameter leaf (and every layer of a scanned
  leaf) is owned by exactly one node, and each kernel node's (c_out, c_in)
  matches the leaf's fan-out / fan-in sizes from its annotation."""
  flat_s = spec_lib.flatten(specs, is_leaf=spec_lib.is_spec)
  flat_p = spec_lib.flatten(shapes)
  owner = graph.leaf_to_node()
  want: set[LeafRef] = set()
  for path, s in flat_s.items():
    shape = tuple(flat_p[path].shape)
    if is_scanned(s):
      want.update((path, i) for i in range(shape[0]))
    else:
      want.add((path, None))
  missing, extra = sorted(want - set(owner), key=str), sorted(set(owner) - want, key=str)
  if missing or extra:
    raise ValueError(f'graph of {type(graph.cfg).__name__} does not cover the params: '
                     f'unmapped leaves {missing[:5]}, mapped leaves not in the params {extra[:5]}')
  for (path, layer), i in owner.items():
    s, shape = flat_s[path], tuple(flat_p[path].shape)
    if layer is not None:
      s, shape = slice_spec(s), shape[1:]
    if s.fan_in:
      c_in, c_out = s.size_of(shape, s.fan_in), s.size_of(shape, s.fan_out)
      if (c_out, c_in) != tuple(graph.shapes[i, :2]):
        raise ValueError(f'node {graph.names[i]!r} has (c_out, c_in) {tuple(graph.shapes[i, :2])} '
                         f'but its leaf {path!r} of shape {shape} has ({c_out}, {c_in})')


def is_scanned(s: spec_lib.ParamSpec) -> bool:
  """Whether a leaf is scanned: its leading axis is 'layers' (one slice per block)."""
  return bool(s.axes) and s.axes[0] == 'layers'


def slice_spec(s: spec_lib.ParamSpec) -> spec_lib.ParamSpec:
  """The spec of one layer of a scanned leaf (drops the leading 'layers' axis)."""
  if not is_scanned(s):
    raise ValueError(f'expected a scanned leaf with a leading layers axis, got axes {s.axes}')
  return spec_lib.ParamSpec(s.axes[1:], tuple(i - 1 for i in s.fan_in), s.role)
