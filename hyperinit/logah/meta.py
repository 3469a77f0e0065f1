"""Meta-training of the GHN: predict a meta-batch of targets' params, run them, backprop.

    mcfg = MetaConfig(total_steps=1000)
    state = init_state(ghn_cfg, mcfg, jax.random.key(0))
    group = groups[i]                                   # a fixed tuple of target configs
    graphs = batch_for(group)                           # padded jraph batch (numpy)
    state, metrics = meta_step(state, graphs, data, ghn_cfg=ghn_cfg, meta_cfg=mcfg, targets=group)

`meta_step` is pure and jitted with the GHN config, the meta config and the
target group static, so it compiles once per group (see `samplers.meta_batches`).
The data batch is a dict: 'image' [B, H, W, C] float + 'label' [B] int for
ViTs, 'tokens' [B, T + 1] int for language models (inputs tokens[:, :-1],
targets tokens[:, 1:]); a group may mix both kinds.

Recipe (METHODS.md §3): loss = mean over targets of (task loss + l2 * sum over
predicted leaves of their Frobenius norms, as the reference's `predparam_wd`);
plain optax clip (5) + AdamW (`make_optimizer`) with linear warm-up then cosine
decay in the trainer's convention (`make_schedule`: lr 0 at update 0); an EMA
(0.999; optionally warmed up) of the GHN params is kept for evaluation.
On a device mesh: `meta_mesh` and `hyperinit.train.ghn_step`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import jraph
import optax

from hyperinit import models
from hyperinit.logah import batching, ghn as ghn_lib, noise as noise_lib
from hyperinit.logah.graph import build_graph
from hyperinit.models.config import ModelConfig, ViTConfig


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  """Meta-training hyper-parameters (frozen: a jit static)."""
  lr: float = 4e-4              # peak learning rate
  weight_decay: float = 1e-2    # AdamW decoupled weight decay on GHN params
  warmup_steps: int = 100       # linear warm-up from 0
  total_steps: int = 10_000     # cosine decay to end_lr_frac * lr at this step
  end_lr_frac: float = 0.01
  clip: float = 5.0             # global-norm gradient clipping
  ema: float = 0.999            # EMA decay of the GHN params (0 disables)
  ema_warmup: bool = False      # decay min(ema, (1 + t) / (10 + t)) at update t (TF-style), so
                                # short runs are not dominated by the initial params
  l2: float = 3e-5              # weight of the sum of per-leaf Frobenius norms of predicted params
  noise: float = 0.0            # Gaussian noise on every predicted weight leaf, as a fraction of
                                # its init std (noise.add_noise), fresh each step: the GHN learns
                                # for the noisy start it is fine-tuned from
  permute_channels: int = 0     # LoGAH: decode each target through a fresh random permutation
                                # of the first N of the K channel rows (ghn.channel_permutation;
                                # 0: off), so that wider-than-pool targets read trained rows


def make_schedule(mc: MetaConfig) -> optax.Schedule:
  """Learning rate of update `count` (0-based), in the trainer's convention
  (`train.optim.make_schedule`): 0 at update 0, linear warm-up to `lr` at update
  `warmup_steps`, then cosine decay to `end_lr_frac * lr` at `total_steps`."""
  return optax.warmup_cosine_decay_schedule(
      0.0, mc.lr, mc.warmup_steps, max(mc.total_steps, mc.warmup_steps + 1),
      end_value=mc.lr * mc.end_lr_frac)


def make_optimizer(mc: MetaConfig) -> optax.GradientTransformation:
  """The GHN's optimizer: optax's global-norm clipping (off at clip 0), then AdamW with
  decoupled decay on every leaf and `make_schedule(mc)`."""
  adamw = optax.adamw(make_schedule(mc), weight_decay=mc.weight_decay)
  return optax.chain(optax.clip_by_global_norm(mc.clip), adamw) if mc.clip else adamw


def init_state(ghn_cfg: ghn_lib.GHNConfig, mc: MetaConfig, rng: jax.Array) -> dict[str, Any]:
  """{'step', 'params', 'ema', 'opt_state'}: a plain pytree (checkpointable as is)."""
  params = ghn_lib.init(ghn_cfg, rng)
  return {'step': jnp.zeros((), jnp.int32), 'params': params,
          'ema': jax.tree.map(jnp.copy, params), 'opt_state': make_optimizer(mc).init(params)}


def batch_for(targets: Sequence[ModelConfig], num_graphs: int | None = None) -> jraph.GraphsTuple:
  """Padded graph batch of a target group (graph i is target i)."""
  graphs = [build_graph(t) for t in targets]
  return batching.batch_graphs(graphs, batching.bucket_for(graphs, num_graphs))


def task_loss(target: ModelConfig, params: dict, batch: dict[str, jax.Array]):
  """(mean cross-entropy, accuracy) of `target` with `params` on its part of `batch`."""
  module = models.build(target)
  if isinstance(target, ViTConfig):
    if 'image' not in batch:
      raise ValueError('a ViT target needs batch["image"] [B, H, W, C] and batch["label"] [B]')
    logits = module.apply({'params': params}, batch['image'])
    labels = batch['label']
  else:
    if 'tokens' not in batch:
      raise ValueError('a language-model target needs batch["tokens"] [B, T + 1]')
    logits = module.apply({'params': params}, batch['tokens'][:, :-1])
    labels = batch['tokens'][:, 1:]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  acc = (jnp.argmax(logits, -1) == labels).mean()
  return loss, acc


def param_penalty(tree: Any) -> jax.Array:
  """Sum over leaves of each leaf's Frobenius norm (the reference's predicted-param decay:
  per tensor, so a few large leaves, e.g. the embedding, do not dominate a global norm)."""
  return sum(jnp.sqrt(jnp.sum(jnp.square(x))) for x in jax.tree.leaves(tree))


# fold_in tag of the channel-permutation stream (the noise stream folds in target indices).
_PERM_STREAM = 0x7E57


def target_terms(params: dict, graphs: jraph.GraphsTuple, batch: dict[str, jax.Array], *,
                 ghn_cfg: ghn_lib.GHNConfig, targets: tuple[ModelConfig, ...], l2: float,
                 noise: float = 0.0, rng: jax.Array | None = None, permute: int = 0,
                 first: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(objective, task loss, accuracy), each [len(targets)], of the GHN's prediction per target.

  Target i of `targets` is graph `first + i` of `graphs` and draws its noise and permutation
  keys from that index (a slice of a meta-batch gives the same terms as the whole batch).
  objective = task loss + l2 * param_penalty(predicted).  With noise > 0 the task loss is that
  of predicted + `noise_lib.add_noise(noise)` (key fold_in(rng, index)); the L2 penalty is on
  the noiseless prediction.  With permute = N > 0, the target is decoded through
  `ghn.channel_permutation` of the first N rows, drawn from fold_in(fold_in(rng, _PERM_STREAM),
  index).
  """
  if (noise or permute) and rng is None:
    raise ValueError(f'meta_loss with noise={noise}, permute={permute} needs an rng key')
  codes = ghn_lib.node_codes(ghn_cfg, params, graphs)
  totals, tasks, accs = [], [], []
  for i, target in enumerate(targets, start=first):
    perm = ghn_lib.channel_permutation(
        ghn_cfg, jax.random.fold_in(jax.random.fold_in(rng, _PERM_STREAM), i),
        permute) if permute else None
    predicted = ghn_lib.decode_params(ghn_cfg, params, jax.tree.map(lambda c: c[i], codes), target,
                                      perm=perm)
    run = noise_lib.add_noise(predicted, target, noise, jax.random.fold_in(rng, i)) if noise \
        else predicted
    loss, acc = task_loss(target, run, batch)
    totals.append(loss + l2 * param_penalty(predicted) if l2 else loss)
    tasks.append(loss)
    accs.append(acc)
  return jnp.stack(totals), jnp.stack(tasks), jnp.stack(accs)


def meta_loss(params: dict, graphs: jraph.GraphsTuple, batch: dict[str, jax.Array], *,
              ghn_cfg: ghn_lib.GHNConfig, targets: tuple[ModelConfig, ...], l2: float,
              noise: float = 0.0, rng: jax.Array | None = None, permute: int = 0):
  """Mean over targets of `target_terms`' objective; returns (loss, metrics).

  metrics: 'task_losses' / 'accuracies' [T] per target, their means 'task_loss' / 'accuracy'.
  """
  totals, tasks, accs = target_terms(params, graphs, batch, ghn_cfg=ghn_cfg, targets=targets,
                                     l2=l2, noise=noise, rng=rng, permute=permute)
  return totals.mean(), {'task_loss': tasks.mean(), 'task_losses': tasks,
                         'accuracy': accs.mean(), 'accuracies': accs}


def check_group(graphs: jraph.GraphsTuple, targets: tuple[ModelConfig, ...]) -> None:
  """Raises if `graphs` (a padded batch: its last graph is padding) holds fewer graphs."""
  if len(targets) > graphs.n_node.shape[0] - 1:
    raise ValueError(f'{len(targets)} targets but the graph batch holds '
                     f'{graphs.n_node.shape[0] - 1} graphs')


def apply_update(state: dict[str, Any], grads: dict, meta_cfg: MetaConfig) -> dict[str, Any]:
  """The meta-state after one optimizer update with `grads` (and the EMA of the new params)."""
  updates, opt_state = make_optimizer(meta_cfg).update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  d = jnp.asarray(meta_cfg.ema, jnp.float32)
  if meta_cfg.ema_warmup:
    t = (state['step'] + 1).astype(jnp.float32)
    d = jnp.minimum(d, (1 + t) / (10 + t))
  ema = jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), state['ema'], params)
  return {'step': state['step'] + 1, 'params': params, 'ema': ema, 'opt_state': opt_state}


@functools.partial(jax.jit, static_argnames=('ghn_cfg', 'meta_cfg', 'targets'), donate_argnums=0)
def meta_step(state: dict[str, Any], graphs: jraph.GraphsTuple, batch: dict[str, jax.Array],
              rng: jax.Array | None = None, *, ghn_cfg: ghn_lib.GHNConfig, meta_cfg: MetaConfig,
              targets: tuple[ModelConfig, ...]) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One meta-training step on a target group, on one device; returns (new state, metrics).

  rng: this step's key for `meta_cfg.noise` and `permute_channels` (required with either).
  On a mesh (and what `train_ghn` runs): `hyperinit.train.ghn.make_meta_step`, the same
  update with the group's targets split over the devices.
  """
  check_group(graphs, targets)
  grad_fn = jax.value_and_grad(meta_loss, has_aux=True)
  (loss, metrics), grads = grad_fn(state['params'], graphs, batch, ghn_cfg=ghn_cfg,
                                   targets=targets, l2=meta_cfg.l2, noise=meta_cfg.noise,
                                   rng=rng, permute=meta_cfg.permute_channels)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return apply_update(state, grads, meta_cfg), metrics
