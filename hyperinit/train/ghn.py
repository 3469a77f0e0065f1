"""Meta-training a GHN on an architecture pool, with our data pipelines and orbax checkpoints.

    from configs import ghn
    result = train_ghn(ghn.get_config('vit_local'), workdir)   # resumes if workdir has checkpoints
    ghn_cfg, params = result['ghn_config'], result['params']  # the EMA params by default
    predicted = hyperinit.logah.predict(ghn_cfg, params, target)

Each step takes the next fixed group of the pool (a seeded permutation of the
groups per epoch, so the order depends only on the seed and the step), the next
data batch, and runs the meta-step of `ghn_step.make_meta_step` on `config.mesh`
(targets of the group over 'data', rows over 'fsdp'; one compile per group).  Every
`eval_every` steps the EMA GHN predicts the pool's and the held-out targets'
params, which are evaluated on fixed batches of the eval split.

Workdir: `checkpoints/<step>/` (items params, opt_state, ema, train {step}, the data
iterator and metadata; orbax, atomic, keep-N), `metrics.jsonl` (one JSON row per log / eval),
and at the end `ghn/` (`saving.save_ghn`: what `experiments/predict.py
--ghn_dir` reads).  SIGTERM saves a checkpoint at the next step and returns;
rerunning the same command resumes, with the same result as an uninterrupted
run (the data iterator position is restored).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hyperinit import checkpoint as ckpt_lib, sharding
from hyperinit.logah import ghn as ghn_lib, meta, meta_mesh, saving, tasks
from hyperinit.models.config import ModelConfig
from hyperinit.train import ghn_step, hooks, metrics as metrics_lib
from hyperinit.train.runner import run_loop


def group_order(num_groups: int, seed: int, step: int) -> int:
  """Index of the group used at `step` (1-based): a seeded permutation per epoch of groups."""
  epoch, pos = divmod(step - 1, num_groups)
  perm = np.random.default_rng([int(seed), int(epoch)]).permutation(num_groups)
  return int(perm[pos])


def make_mesh(config: Any) -> jax.sharding.Mesh:
  """The meta-training mesh of `config.mesh` (data, fsdp; tensor 1).

  Without a -1 axis the mesh takes the first data x fsdp devices (default 1: one device);
  several processes need a mesh over every device.
  """
  m = config.get('mesh') or {}
  shape = {k: int(m.get(k, 1)) for k in sharding.MESH_AXES}
  devices = jax.devices()
  if -1 not in shape.values():
    n = math.prod(shape.values())
    if jax.process_count() > 1 and n != len(devices):
      raise ValueError(f'config.mesh {shape} covers {n} of {len(devices)} devices; a run over '
                       f'{jax.process_count()} processes needs a mesh over all of them')
    if n > len(devices):
      raise ValueError(f'config.mesh {shape} needs {n} devices, have {len(devices)}')
    devices = devices[:n]
  mesh = sharding.make_mesh(shape, devices)
  meta_mesh.check_mesh(mesh, int(config.data.batch_size))
  return mesh


def evaluate(ghn_cfg: ghn_lib.GHNConfig, params: dict,
             groups: list[tuple[ModelConfig, ...]], batches: list[dict[str, np.ndarray]],
             named: dict[str, ModelConfig] | None = None, *,
             eval_step: Callable[..., Any] | None = None,
             mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """Mean loss / accuracy of the predicted params over `batches` (fixed eval batches).

  eval_step: `ghn_step.make_eval_step(ghn_cfg, mesh)` (built once per run; default: one
  device); mesh: its mesh.
  Returns {'pool_loss', 'pool_accuracy'} (mean over every architecture of
  `groups`, the evaluated pool groups) and, for each entry of `named`, '<name>/loss' and '<name>/accuracy'.
  """
  if mesh is None:
    mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  eval_step = eval_step or ghn_step.make_eval_step(ghn_cfg, mesh)
  out: dict[str, float] = {}
  rows, rep = ghn_step.row_sharding(mesh), sharding.replicated(mesh)
  mb = [ghn_step.to_global(tasks.meta_batch(b), rows) for b in batches]

  def run(group):
    graphs = ghn_step.to_global(meta.batch_for(group), rep)
    ls = [eval_step(params, graphs, b, group) for b in mb]
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

  mesh = make_mesh(config)
  rules = sharding.make_rules((config.get('mesh') or {}).get('rules'))
  opts = ghn_step.FAST_COMPILE if config.get('fast_compile', False) else None
  meta_step = ghn_step.make_meta_step(ghn_cfg, meta_cfg, mesh, rules, compiler_options=opts)
  eval_step = ghn_step.make_eval_step(ghn_cfg, mesh, rules, compiler_options=opts)
  rows, rep = ghn_step.row_sharding(mesh), sharding.replicated(mesh)
  logging.info('GHN meta-training on mesh %s: %d targets of a group per device along data, '
               'each target\'s %d rows split %d ways', dict(mesh.shape),
               math.ceil(int(config.pool.meta_batch) / mesh.shape['data']),
               int(config.data.batch_size), mesh.shape['fsdp'])

  ck = config.checkpoint
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=int(ck.every),
                               keep=int(ck.keep), async_save=bool(ck.async_save))
  loader = tasks.data_loader(config, config.data.train_split, train=True, seed=seed,
                             batch_size=int(config.data.batch_size))
  data_iter = iter(loader)
  run_meta = {'ghn_config': json.loads(ghn_cfg.to_json()),
              'config': json.loads(config.to_json_best_effort())}
  start = ckpt.latest_step()
  if start is not None:
    items, _ = ckpt.restore(
        ghn_step.to_items(ghn_step.abstract_meta_state(ghn_cfg, meta_cfg, mesh, rules)), start,
        data_iter)
    state = ghn_step.from_items(items)
    logging.info('resumed from %s at step %d', ckpt.directory, start)
  else:
    state = ghn_step.init_meta_state(ghn_cfg, meta_cfg, jax.random.key(seed), mesh, rules)
  start = int(state['step'])
  graphs = {}  # group index -> padded graph batch (replicated global arrays)
  noise_key = jax.random.fold_in(jax.random.key(seed), 1)

  def step_fn(state, step):
    gi = group_order(len(groups), seed, step)
    if gi not in graphs:
      graphs[gi] = ghn_step.to_global(meta.batch_for(groups[gi]), rep)
    batch = ghn_step.to_global(tasks.meta_batch(next(data_iter)), rows)
    step_key = jax.random.fold_in(noise_key, step)   # noise / permutation draws: a function of the step
    state, m = meta_step(state, graphs[gi], batch, step_key, groups[gi])
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
    return evaluate(ghn_cfg, _eval_params(config, state), eval_groups, eval_data, held_out,
                    eval_step=eval_step, mesh=mesh)

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
  save = hooks.Checkpoint(ckpt, data_iter, run_meta, to_saveable=ghn_step.to_items,
                          stop_reason='SIGTERM')
  out = run_loop(state, step_fn, [guard, log, ev, save,
                                  *hooks.profile_hook(config.get('profile_steps'), workdir)],
                 start=start, total=total, stop=stop, workdir=workdir)
  state = out.state
  step = int(state['step'])
  done = step == total
  ghn_dir = os.path.join(workdir, 'ghn')
  if done and not os.path.isdir(ghn_dir):   # written atomically: whole or absent
    if jax.process_count() == 1:
      saving.save_ghn(ghn_dir, ghn_cfg, _eval_params(config, state))
    else:   # a params directory is written by one process; read the GHN from the checkpoint
      logging.info('%d processes: no %s export; the GHN is the checkpoint of step %d in %s',
                   jax.process_count(), ghn_dir, step, ckpt.directory)
  return {'step': step, 'preempted': out.preempted, 'done': done, 'train': log.scalars,
          'eval': ev.scalars, 'ghn_config': ghn_cfg, 'params': _eval_params(config, state),
          'state': state}
