"""What a training run builds from its config before the loop: mesh, task, optimizer,
shardings and the jitted steps (`setup`), plus feeding batches and evaluating.

    s = build.setup(config)                 # a `Setup` (handy in notebooks)
    state, metrics = s.train_step(state, build.global_batch(batch, s.batch_shardings, shapes))
    build.evaluate(s, config, state.params)  # {'loss': ..., ...}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperinit import models, sharding
from hyperinit.train import mup as mup_train, optim, step as step_lib, tasks


@dataclasses.dataclass
class Setup:
  """Everything built from the config before the loop runs (handy in notebooks)."""
  mesh: Any
  rules: Any
  task: tasks.Task
  specs: Any
  shapes: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  shardings: step_lib.TrainState
  batch_shardings: Any
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]


def setup(config: Any, *, model_cfg: models.ModelConfig | None = None,
          optimizer: optim.OptimizerFactory | optax.GradientTransformation | None = None,
          lr_multipliers: Any = None, devices: Any = None,
          mup_run: mup_train.MupRun | None = None) -> Setup:
  """Mesh, rules, task, optimizer, shardings and jitted steps for a config.

  The optimizer: `mup_run`'s (muP's per-leaf factors), else `optimizer` (a
  GradientTransformation, or `fn(config, specs, schedule)`), else
  `optim.from_config(config.optimizer)` with `lr_multipliers`.
  """
  mesh = sharding.make_mesh({k: int(config.mesh[k]) for k in sharding.MESH_AXES}, devices)
  model_cfg = model_cfg or tasks.resolve_model_config(config)
  task = tasks.make_task(config, model_cfg)
  specs, shapes = models.param_specs(model_cfg), models.param_shapes(model_cfg)
  rules = sharding.fit_rules(sharding.make_rules(config.mesh.get('rules')), shapes, specs,
                             mesh)
  tx, schedule = _optimizer(config, specs, optimizer, lr_multipliers, mup_run)
  param_sh = sharding.tree_shardings(shapes, specs, mesh, rules)
  state_sh = step_lib.state_shardings(param_sh, tx, mesh, shapes)
  gb, k = int(config.batch_size), int(config.get('grad_accum_steps') or 1)
  div = sharding.batch_divisor(mesh, rules)
  if gb % (div * k) or gb % jax.process_count():
    raise ValueError(f'batch_size={gb} must be divisible by the batch sharding ({div} ways) '
                     f'x grad_accum_steps ({k}) and by the process count ({jax.process_count()})')
  batch_sh = {key: sharding.batch_sharding(mesh, rules, len(s.shape))
              for key, s in task.batch_shapes(gb).items()}
  with sharding.activation_context(mesh, rules):
    train_step = step_lib.make_train_step(task.loss_fn, tx, state_sh, batch_sh,
                                          grad_accum_steps=k)
    eval_step = step_lib.make_eval_step(task.eval_fn, param_sh, mesh)
  return Setup(mesh, rules, task, specs, shapes, tx, schedule, state_sh, batch_sh,
               _in_context(train_step, mesh, rules), _in_context(eval_step, mesh, rules))


def _optimizer(config, specs, optimizer, lr_multipliers, mup_run):
  """(tx, schedule), the schedule built once."""
  total = int(config.num_train_steps)
  if mup_run is not None:
    if optimizer is not None or lr_multipliers is not None:
      raise ValueError('config.mup.enabled builds the muP optimizer; do not pass optimizer= or '
                       'lr_multipliers= as well')
    return mup_run.optimizer(config.optimizer, total, specs)
  if optimizer is None:
    # A per-leaf learning rate scales the whole update, decay included ('follows_lr').
    return optim.from_config(config.optimizer, total, specs, lr_factors=lr_multipliers,
                             wd_mode='follows_lr')
  schedule = optim.make_schedule(config.optimizer, total)
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer, schedule
  return optimizer(config, specs, schedule), schedule


def _in_context(fn, mesh, rules):
  """Calls (and so traces) `fn` with the activation rules and mesh set."""
  def wrapped(*args):
    with sharding.activation_context(mesh, rules):
      return fn(*args)
  wrapped.jitted = fn
  return wrapped


def global_batch(batch: dict[str, np.ndarray], batch_shardings: dict[str, Any],
                 expected: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
  """This process's slice of a batch -> global arrays sharded over the mesh."""
  out = {}
  for key, want in expected.items():
    if key not in batch:
      raise KeyError(f'data batch has keys {sorted(batch)}; the task needs {key!r}')
    x = np.asarray(batch[key])
    local = (want.shape[0] // jax.process_count(),) + tuple(want.shape[1:])
    if x.shape != local:
      raise ValueError(f'data batch {key!r} has shape {x.shape}; expected {local} (global '
                       f'{want.shape} over {jax.process_count()} processes)')
    out[key] = jax.make_array_from_process_local_data(batch_shardings[key], x.astype(want.dtype),
                                                      want.shape)
  return out


def evaluate(s: Setup, config: Any, params: Any, loader: Any = None) -> dict[str, float]:
  """Eval metrics over `config.eval_batches` batches (or one full pass if <= 0).

  Batches may carry a 'mask' [B] (1 real, 0 padding) so a pass counts every
  example exactly once.
  """
  loader = loader or tasks.make_loader(config, s.task, tasks.eval_split(config), train=False,
                                       seed=int(config.seed))
  limit = int(config.eval_batches)
  eb = int(config.get('eval_batch_size') or config.batch_size)
  sums = None
  for i, batch in enumerate(loader):
    if 0 < limit <= i:
      break
    expected = dict(s.task.batch_shapes(eb))
    if 'mask' in batch:
      expected['mask'] = jax.ShapeDtypeStruct((eb,), jnp.float32)
    shardings = {k: sharding.batch_sharding(s.mesh, s.rules, len(v.shape))
                 for k, v in expected.items()}
    out = s.eval_step(params, global_batch(batch, shardings, expected))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  if sums is None:
    raise ValueError(f'eval split {tasks.eval_split(config)!r} gave no full batch of {eb}')
  return s.task.summarize({k: float(v) for k, v in jax.device_get(sums).items()})
