"""Batching graphs with jraph and padding them into a few size buckets.

A batch is a `jraph.GraphsTuple` built with `jraph.batch_np` (the numpy
`jraph.batch`) and padded with `jraph.pad_with_graphs`:

  nodes   {'feat': int32 [n_node_total, 5]}   (op, bin c_out, bin c_in, bin k, slot)
  senders, receivers  int32 [n_edge_total]     forward edges (degrees come from these)
  globals {'spd': int16 [n_graph_total, max_nodes, max_nodes]}  per-graph hop distances
          (-1 unreachable), padded to the bucket's max_nodes

Every array's shape depends only on the bucket `(num_graphs, max_nodes)`, so a
jitted encoder compiles once per bucket: `n_node_total = num_graphs *
max_nodes + 1`, `n_edge_total = num_graphs * EDGES_PER_NODE * max_nodes`,
`n_graph_total = num_graphs + 1` (the last graph holds the padding).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hyperinit.logah.graph import Graph

# Node-count buckets (max nodes per graph).  ViTs-1K / GPTs-1K graphs have
# 40-130 nodes, GPT-2 S/M/L 150/294/438, GPT-2 XL 582.
NODE_BUCKETS = (32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
EDGES_PER_NODE = 2  # our graphs have E < 1.5 N


@dataclasses.dataclass(frozen=True)
class Bucket:
  """Static shape of a padded batch: graphs per batch and nodes per graph."""
  num_graphs: int
  max_nodes: int

  @property
  def n_node(self) -> int:
    return self.num_graphs * self.max_nodes + 1

  @property
  def n_edge(self) -> int:
    return self.num_graphs * EDGES_PER_NODE * self.max_nodes


def bucket_for(graphs: Sequence[Graph], num_graphs: int | None = None) -> Bucket:
  """The smallest bucket holding these graphs (num_graphs defaults to len(graphs))."""
  n = max(g.num_nodes for g in graphs)
  for b in NODE_BUCKETS:
    if n <= b:
      break
  else:
    b = int(2 ** np.ceil(np.log2(n)))
  return Bucket(num_graphs or len(graphs), b)


def to_graphs_tuple(graph: Graph, max_nodes: int) -> jraph.GraphsTuple:
  """One graph as a GraphsTuple whose `spd` global is padded to max_nodes."""
  n = graph.num_nodes
  if n > max_nodes:
    raise ValueError(f'graph of {n} nodes does not fit a bucket of {max_nodes} nodes')
  spd = np.full((1, max_nodes, max_nodes), -1, np.int16)
  spd[0, :n, :n] = np.minimum(graph.spd, np.iinfo(np.int16).max)
  return jraph.GraphsTuple(
      nodes={'feat': graph.features}, edges=None, senders=graph.senders.astype(np.int32),
      receivers=graph.receivers.astype(np.int32), n_node=np.array([n], np.int32),
      n_edge=np.array([graph.num_edges], np.int32), globals={'spd': spd})


def batch_graphs(graphs: Sequence[Graph], bucket: Bucket | None = None) -> jraph.GraphsTuple:
  """Batches and pads graphs into a bucket (numpy arrays; see the module doc for shapes)."""
  bucket = bucket or bucket_for(graphs)
  if len(graphs) > bucket.num_graphs:
    raise ValueError(f'{len(graphs)} graphs do not fit a bucket of {bucket.num_graphs} graphs')
  too_many = [g.num_edges for g in graphs if g.num_edges > EDGES_PER_NODE * bucket.max_nodes]
  if too_many:
    raise ValueError(f'a graph has {too_many[0]} edges, more than the bucket allows '
                     f'({EDGES_PER_NODE} x {bucket.max_nodes})')
  batched = jraph.batch_np([to_graphs_tuple(g, bucket.max_nodes) for g in graphs])
  return jraph.pad_with_graphs(batched, bucket.n_node, bucket.n_edge, bucket.num_graphs + 1)


def to_dense(graphs: jraph.GraphsTuple):
  """Dense per-graph views of a padded batch (jit-friendly; shapes are static).

  Returns:
    feat: int32 [G, M, 5] node features (zeros at padded slots);
    mask: bool [G, M], True at real nodes;
    in_deg, out_deg: int32 [G, M] from the forward edges;
    spd: int32 [G, M, M] forward hop distances (-1 unreachable).
    G = n_graph_total (the last graph is padding), M = max_nodes.
  """
  spd = graphs.globals['spd'].astype(jnp.int32)
  n_graph, max_nodes = spd.shape[0], spd.shape[1]
  feat = graphs.nodes['feat']
  total = feat.shape[0]
  gid = jnp.repeat(jnp.arange(n_graph), graphs.n_node, total_repeat_length=total)
  pos = jnp.arange(total) - (jnp.cumsum(graphs.n_node) - graphs.n_node)[gid]
  real = jraph.get_graph_padding_mask(graphs)[gid]
  # Padding nodes are scattered out of bounds and dropped.
  row = jnp.where(real, gid, n_graph)
  ones = jnp.ones_like(graphs.senders)
  in_deg = jax.ops.segment_sum(ones, graphs.receivers, total)
  out_deg = jax.ops.segment_sum(ones, graphs.senders, total)

  def dense(x):
    out = jnp.zeros((n_graph, max_nodes) + x.shape[1:], x.dtype)
    return out.at[row, pos].set(x, mode='drop')

  mask = dense(jnp.ones((total,), bool))
  return dense(feat), mask, dense(in_deg), dense(out_deg), spd

