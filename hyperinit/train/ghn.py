"""Meta-training a GHN on an architecture pool, with our data pipelines and orbax checkpoints.

    from configs import ghn
    result = train_ghn(ghn.get_config('vit_local'), workdir)   # resumes if workdir has checkpoints
    ghn_cfg, params = result['ghn_config'], result['params']  # the EMA params by default
    predicted = hyperinit.logah.predict(ghn_cfg, params, target)

Each step takes the next fixed group of the pool (a seeded permutation of the
groups per epoch, so the order depends only on the seed and the step), the next
data batch, and runs `meta.meta_step` (one compile per group).  Every
`eval_every` steps the EMA GHN predicts the pool's and the held-out targets'
params, which are evaluated on fixed batches of the eval split.

Workdir: `checkpoints/<step>/` (GHN params, optimizer + EMA state, step, data
iterator; orbax, atomic, keep-N), `metrics.jsonl` (one JSON row per log / eval),
and at the end `ghn/` (`saving.save_ghn`: what `experiments/predict.py
--ghn_dir` reads).  SIGTERM saves a checkpoint at the next step and returns;
rerunning the same command resumes, with the same result as an uninterrupted
run (the data iterator position is restored).
"""

from __future__ import annotations

import collections
import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from absl import logging

from hyperinit import checkpoint as ckpt_lib
from hyperinit.logah import ghn as ghn_lib, meta, saving, tasks
from hyperinit.models.config import ModelConfig
from hyperinit.train import hooks, metrics as metrics_lib
from hyperinit.train.loop import run_loop
from hyperinit.train.step import TrainState


# XLA options for `fast_compile`: far shorter CPU compiles of the many small per-group
# programs (measured ~2.5x), at the price of slower steps; for smoke runs and tests.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
# Ahead-of-time compiled programs, least recently used last out.  Bounded: every executable
# holds its buffers' layouts and code, and an experiment compiles one meta-step and one eval
# program per group for each GHN it trains; 256 holds several GHNs' pools (16-32 groups each).
COMPILED_CACHE_SIZE = 256
_COMPILED: collections.OrderedDict[Any, Any] = collections.OrderedDict()


def call_jitted(fn: Any, args: tuple, statics: dict[str, Any], fast: bool):
  """fn(*args, **statics) for a jitted `fn`; with `fast`, compiled ahead of time with
  FAST_COMPILE (cached per static arguments and input shapes, across runs of a process)."""
  if not fast:
    return fn(*args, **statics)
  leaves, tree = jax.tree.flatten(args)
  key = (fn, tuple(sorted(statics.items())), tree,
         tuple((np.shape(x), str(x.dtype)) for x in leaves))
  if key in _COMPILED:
    _COMPILED.move_to_end(key)
  else:
    _COMPILED[key] = fn.lower(*args, **statics).compile(compiler_options=FAST_COMPILE)
    while len(_COMPILED) > COMPILED_CACHE_SIZE:
      _COMPILED.popitem(last=False)
  return _COMPILED[key](*args)


def release_programs() -> None:
  """Drops every compiled program (this module's AOT cache and jax's own caches).

  A long experiment compiles a meta-step and an eval program per pool group for each GHN and
  fine-tuning programs per target; kept alive, their executable code exhausts the process's
  memory mappings (LLVM: 'Cannot allocate memory', measured after two 16-group GHNs). Call it
  between runs whose programs will not be needed again.
  """
  _COMPILED.clear()
  jax.clear_caches()


def group_order(num_groups: int, seed: int, step: int) -> int:
  """Index of the group used at `step` (1-based): a seeded permutation per epoch of groups."""
  epoch, pos = divmod(step - 1, num_groups)
  perm = np.random.default_rng([int(seed), int(epoch)]).permutation(num_groups)
  return int(perm[pos])


@functools.partial(jax.jit, static_argnames=('ghn_cfg', 'targets'))
def eval_group(params: dict, graphs: jraph.GraphsTuple, batch: dict[str, jax.Array], *,
               ghn_cfg: ghn_lib.GHNConfig,
               targets: tuple[ModelConfig, ...]) -> tuple[jax.Array, jax.Array]:
  """(task loss [T], accuracy [T]) of each target with GHN-predicted params on `batch`."""
  _, m = meta.meta_loss(params, graphs, batch, ghn_cfg=ghn_cfg, targets=targets, l2=0.0)
  return m['task_losses'], m['accuracies']


def evaluate(ghn_cfg: ghn_lib.GHNConfig, params: dict,
             groups: list[tuple[ModelConfig, ...]], batches: list[dict[str, np.ndarray]],
             named: dict[str, ModelConfig] | None = None,
             fast_compile: bool = False) -> dict[str, float]:
  """Mean loss / accuracy of the predicted params over `batches` (fixed eval batches).

  Returns {'pool_loss', 'pool_accuracy'} (mean over every architecture of
  `groups`, the evaluated pool groups) and, for each entry of `named`, '<name>/loss' and '<name>/accuracy'.
  """
  out: dict[str, float] = {}
  mb = [tasks.meta_batch(b) for b in batches]

  def run(group):
    graphs = meta.batch_for(group)
    ls = [call_jitted(eval_group, (params, graphs, b), dict(ghn_cfg=ghn_cfg, targets=group),
                      fast_compile) for b in mb]
    loss, acc = jax.device_get((jnp.mean(jnp.stack([l for l, _ in ls]), 0),
                                jnp.mean(jnp.stack([a for _, a in ls]), 0)))
    return loss, acc

  pool = [run(g) for g in groups]
  out['pool_loss'] = float(np.mean(np.concatenate([l for l, _ in pool])))
  out['pool_accuracy'] = float(np.mean(np.concatenate([a for _, a in pool])))
  for name, target in (named or {}).items():
    loss, acc = run((target,))
    out[f'{name}/loss'], out[f'{name}/accuracy'] = float(loss[0]), float(acc[0])
  return out


def to_train_state(state: dict[str, Any], rng: jax.Array) -> TrainState:
  """The meta-state as the trainer's TrainState (what `checkpoint.Checkpointer` saves).

  The EMA of the GHN params travels with the optimizer state:
  opt_state = {'adamw': the optax state, 'ema': the EMA params}.
  """
  return TrainState(step=state['step'], params=state['params'],
                    opt_state={'adamw': state['opt_state'], 'ema': state['ema']}, rng=rng)


def from_train_state(ts: TrainState) -> dict[str, Any]:
  return {'step': ts.step, 'params': ts.params, 'ema': ts.opt_state['ema'],
          'opt_state': ts.opt_state['adamw']}


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _eval_params(config: Any, state: dict) -> dict:
  which = config.get('eval_params', 'ema')
  if which not in ('ema', 'params'):
    raise ValueError(f"config.eval_params={which!r}; expected 'ema' or 'params'")
  return state[which]


def train_ghn(config: Any, workdir: str, *,
              on_step: Callable[[int, dict[str, Any]], None] | None = None,
              stop_at: int | None = None) -> dict[str, Any]:
  """Meta-trains a GHN as `config` says (configs/ghn.py), in `workdir`, resuming if possible.

  Args:
    config: a single-pool config of configs/ghn.py.
    workdir: run directory (checkpoints/, metrics.jsonl, ghn/).
    on_step: called as on_step(step, metrics) after every step (metrics are
      device arrays; e.g. a notebook's live plot, or a test that sends SIGTERM).
    stop_at: save and return after this step (a time-sliced run); None: num_steps.

  Returns:
    {'step', 'preempted', 'done', 'train' (last logged means), 'eval' (last eval),
     'ghn_config', 'params' (the EMA or raw GHN params, config.eval_params),
     'state' (step, params, ema, opt_state)}.
  """
  metrics_lib.quiet_libraries()
  os.makedirs(workdir, exist_ok=True)
  ghn_cfg, meta_cfg = tasks.ghn_config(config), tasks.meta_config(config)
  pool, groups = tasks.make_pool(config)
  held_out = tasks.targets(config) if config.get('eval_targets', True) else {}
  total, seed = int(config.num_steps), int(config.seed)
  stop = total if stop_at is None else min(int(stop_at), total)
  logging.info('GHN %s: %d params; pool %s: %d architectures in %d groups of %d; %d steps',
               ghn_cfg.decoder, ghn_lib.count_params(ghn_cfg), config.pool.name, len(pool),
               len(groups), int(config.pool.meta_batch), total)

  ck = config.checkpoint
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=int(ck.every),
                               keep=int(ck.keep), async_save=bool(ck.async_save))
  loader = tasks.data_loader(config, config.data.train_split, train=True, seed=seed,
                             batch_size=int(config.data.batch_size))
  data_iter = iter(loader)
  run_meta = {'ghn_config': json.loads(ghn_cfg.to_json()),
              'config': json.loads(config.to_json_best_effort())}
  rng = jax.random.key_data(jax.random.key(seed))  # unused by the meta-step; the trainer's field
  state = meta.init_state(ghn_cfg, meta_cfg, jax.random.key(seed))
  start = ckpt.latest_step()
  if start is not None:
    ts, _ = ckpt.restore(_abstract(to_train_state(state, rng)), start, data_iter)
    state = from_train_state(ts)
    logging.info('resumed from %s at step %d', ckpt.directory, start)
  start = int(state['step'])
  graphs = {}  # group index -> padded graph batch (numpy)
  noise_key = jax.random.fold_in(jax.random.key(seed), 1)
  fast = bool(config.get('fast_compile', False))

  def step_fn(state, step):
    gi = group_order(len(groups), seed, step)
    if gi not in graphs:
      graphs[gi] = meta.batch_for(groups[gi])
    batch = tasks.meta_batch(next(data_iter))
    step_key = jax.random.fold_in(noise_key, step)   # noise / permutation draws: a function of the step
    state, m = call_jitted(meta.meta_step, (state, graphs[gi], batch, step_key),
                           dict(ghn_cfg=ghn_cfg, meta_cfg=meta_cfg, targets=groups[gi]), fast)
    m = {k: v for k, v in m.items() if k not in ('task_losses', 'accuracies')}
    if on_step is not None:
      on_step(step, m)  # before the SIGTERM check: a signal sent here stops at this step
    return state, m

  eval_data = None  # fixed eval batches, read at the first eval
  # Each evaluated group is one more compiled program: a subset of the pool's groups
  # (config.eval_pool_groups; 0 or None: all) keeps the eval cost bounded on big pools.
  n_eval = int(config.get('eval_pool_groups') or 0)
  eval_groups = groups[:n_eval] if n_eval > 0 else groups

  def eval_fn(state):
    nonlocal eval_data
    eval_data = eval_data or tasks.eval_batches(config)
    return evaluate(ghn_cfg, _eval_params(config, state), eval_groups, eval_data, held_out, fast)

  eval_every = int(config.eval_every)
  guard = hooks.NonFiniteGuard(
      lambda m: m['loss'],
      lambda first, step: (f'non-finite meta-loss by step {step}; last good checkpoint: '
                           f'step {ckpt.latest_step()} in {ckpt.directory}'))
  log = hooks.Log(int(config.log_every), ('loss', 'task_loss', 'accuracy'),
                  int(config.pool.meta_batch), 'archs', schedule=meta.make_schedule(meta_cfg),
                  guard=guard)
  # config.eval_every = 0 still evaluates once, at the end of the run.
  ev = hooks.Eval(eval_fn, eval_every, at_end=True, at_start=eval_every > 0)
  save = hooks.Checkpoint(ckpt, data_iter, run_meta, to_saveable=lambda st: to_train_state(st, rng),
                          stop_reason='SIGTERM')
  out = run_loop(state, step_fn, [guard, log, ev, save,
                                  *hooks.profile_hook(config.get('profile_steps'), workdir)],
                 start=start, total=total, stop=stop, workdir=workdir)
  state = out.state
  step = int(state['step'])
  done = step == total
  ghn_dir = os.path.join(workdir, 'ghn')
  if done and not os.path.isdir(ghn_dir):   # written atomically: whole or absent
    saving.save_ghn(ghn_dir, ghn_cfg, _eval_params(config, state))
  return {'step': step, 'preempted': out.preempted, 'done': done, 'train': log.scalars,
          'eval': ev.scalars, 'ghn_config': ghn_cfg, 'params': _eval_params(config, state),
          'state': state}
