"""A meta-batch split over a device mesh: targets over 'data', each target's rows over 'fsdp'.

    (loss, metrics), grads = split_grads(params, graphs, batch, rng, mesh=mesh,
                                         ghn_cfg=ghn_cfg, meta_cfg=meta_cfg, targets=group)

A meta-batch is a tuple of different architectures, so no single SPMD program runs them
all at once: under `jax.shard_map`, device (d, f) of the ('data', 'fsdp') grid picks its
contiguous slice of the targets with `lax.switch(axis_index('data'))` (every slice is
compiled into the one program; each device runs its own) and runs it on its rows of the
batch (rows split over 'fsdp').  The graph encoder runs on the whole group's graphs on every
device (it is small); each device decodes and runs only its targets.  A psum over both
axes gives the meta-batch's mean loss and gradient: the same numbers as `meta.meta_loss` on
one device, up to the order of the float sums (tests/ghn_mesh_test.py).

A group of T targets on a data axis of D: slices of ceil(T / D) targets, the last ones short
or empty (an empty slice contributes zeros), so any T runs on any D; T divisible by D keeps
every device busy.  The 'tensor' axis must be 1 (a GHN's leaves are too small to split).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import jraph
import optax
from jax.sharding import Mesh, PartitionSpec as P

from hyperinit.logah import ghn as ghn_lib, meta
from hyperinit.models.config import ModelConfig

TARGET_AXIS = 'data'   # the meta-batch's architectures
ROW_AXIS = 'fsdp'      # each target's rows of the data batch


def check_mesh(mesh: Mesh, batch_rows: int | None = None) -> None:
  """Raises a one-line ValueError if `mesh` cannot run a meta-step (or split `batch_rows`)."""
  if mesh.shape.get('tensor', 1) != 1:
    raise ValueError(f'GHN meta-training splits targets over mesh axis {TARGET_AXIS!r} and rows '
                     f'over {ROW_AXIS!r}; mesh.tensor must be 1, got mesh {dict(mesh.shape)}')
  rows = mesh.shape.get(ROW_AXIS, 1)
  if batch_rows is not None and batch_rows % rows:
    raise ValueError(f'a data batch of {batch_rows} rows does not split over mesh axis '
                     f'{ROW_AXIS!r} of size {rows}; use a batch size divisible by {rows}')


def slices(num_targets: int, parts: int) -> list[range]:
  """Contiguous target slices, one per device of the data axis (ceil-sized; trailing ones short)."""
  per = -(-num_targets // parts)
  return [range(min(k * per, num_targets), min((k + 1) * per, num_targets)) for k in range(parts)]


def _split(local: Callable[[range], Callable[..., Any]], mesh: Mesh, targets: tuple, args: tuple):
  """psum over the mesh of local(slice)(*args) for this device's target slice (see module doc)."""
  parts = mesh.shape.get(TARGET_AXIS, 1)
  branches = [local(r) for r in slices(len(targets), parts)]

  def body(*a):
    out = branches[0](*a) if parts == 1 else jax.lax.switch(
        jax.lax.axis_index(TARGET_AXIS), branches, *a)
    return jax.lax.psum(out, (TARGET_AXIS, ROW_AXIS))

  params, graphs, batch, rng = args
  return jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(ROW_AXIS), P()), out_specs=P(),
                       check_vma=False)(params, graphs, batch, rng)


def _place(r: range, num_targets: int, v: jax.Array, rows: int) -> jax.Array:
  """A slice's per-target means [len(r)] in a [T] vector of zeros, as this row shard's share."""
  return jnp.zeros((num_targets,), v.dtype).at[r.start:r.stop].set(v / rows)


def _key(rng: jax.Array | None, noise: float, permute: int) -> jax.Array:
  if (noise or permute) and rng is None:
    raise ValueError(f'meta_loss with noise={noise}, permute={permute} needs an rng key')
  return jax.random.key(0) if rng is None else rng   # unread without noise / permutation


def split_grads(params: dict, graphs: jraph.GraphsTuple, batch: dict[str, jax.Array],
                rng: jax.Array | None, *, mesh: Mesh, ghn_cfg: ghn_lib.GHNConfig,
                meta_cfg: meta.MetaConfig, targets: tuple[ModelConfig, ...]):
  """((loss, metrics), grads) of `meta.meta_loss` with the meta-batch split over `mesh`.

  Call it inside a jit (e.g. `train.ghn.make_meta_step`).  metrics as `meta.meta_loss`'s plus
  'loss' and 'grad_norm'; everything returned is replicated.
  """
  meta.check_group(graphs, targets)
  check_mesh(mesh)
  mc, t, rows = meta_cfg, len(targets), mesh.shape.get(ROW_AXIS, 1)
  key = _key(rng, mc.noise, mc.permute_channels)

  def local(r: range):
    def run(params, graphs, batch, key):
      if not r:
        return (jnp.zeros(()), jnp.zeros((t,)), jnp.zeros((t,)),
                jax.tree.map(jnp.zeros_like, params))

      def objective(p):
        total, task, acc = meta.target_terms(
            p, graphs, batch, ghn_cfg=ghn_cfg, targets=targets[r.start:r.stop], l2=mc.l2,
            noise=mc.noise, rng=key, permute=mc.permute_channels, first=r.start)
        return total.sum() / (t * rows), (task, acc)

      (loss, (task, acc)), grads = jax.value_and_grad(objective, has_aux=True)(params)
      return loss, _place(r, t, task, rows), _place(r, t, acc, rows), grads
    return run

  loss, tasks, accs, grads = _split(local, mesh, targets, (params, graphs, batch, key))
  metrics = {'task_loss': tasks.mean(), 'task_losses': tasks, 'accuracy': accs.mean(),
             'accuracies': accs, 'loss': loss, 'grad_norm': optax.tree.norm(grads)}
  return (loss, metrics), grads


def split_eval(params: dict, graphs: jraph.GraphsTuple, batch: dict[str, jax.Array], *,
               mesh: Mesh, ghn_cfg: ghn_lib.GHNConfig,
               targets: tuple[ModelConfig, ...]) -> tuple[jax.Array, jax.Array]:
  """(task loss [T], accuracy [T]) of each target's predicted params on `batch`, split over
  `mesh` like `split_grads` (no noise, no permutation, no L2)."""
  meta.check_group(graphs, targets)
  check_mesh(mesh)
  t, rows = len(targets), mesh.shape.get(ROW_AXIS, 1)

  def local(r: range):
    def run(params, graphs, batch, key):
      del key
      if not r:
        return jnp.zeros((t,)), jnp.zeros((t,))
      _, task, acc = meta.target_terms(params, graphs, batch, ghn_cfg=ghn_cfg,
                                       targets=targets[r.start:r.stop], l2=0.0, first=r.start)
      return _place(r, t, task, rows), _place(r, t, acc, rows)
    return run

  return _split(local, mesh, targets, (params, graphs, batch, jax.random.key(0)))
