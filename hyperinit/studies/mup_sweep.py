"""µTransfer learning-rate sweep (Tensor Programs V, Fig. 1): loss vs log2 LR per width, SP vs muP.

For every width, parametrisation ('sp' or 'mup'), seed and learning rate on a
log2 grid, our GPT trains a fixed number of steps on the embedded corpus and
is evaluated on held-out text.  Under muP the best learning rate should stay
put as the model widens; under SP it moves (or the large rates diverge).

    results = run_sweep(config, workdir)       # configs/mup_sweep.py; resumable
    summary = sweep_report.summarize(results['points'])   # argmins per width and seed, shifts
    sweep_report.write_outputs(workdir, results)          # results/summary.json, table.md, png

All points of one (parametrisation, width) share one compiled program: the
peak learning rate is a traced argument (the optimizer runs with a unit-peak
schedule and the update is scaled by it, exact since weight decay is scaled
by the same peak LR in optax's adamw) and `steps` run in `lax.scan` chunks, so
the sweep compiles once per width and parametrisation.  A run whose loss
becomes non-finite, or whose mean loss over a chunk exceeds
`config.diverge_loss`, stops and is recorded as diverged.  The models, init
and optimizer are what the trainer builds for `config.mup`
(`hyperinit.train.mup`), so the best muP learning rate of the sweep is the
`config.optimizer.learning_rate` to train with.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperinit import data, models
from hyperinit.studies.mup_sweep_report import LABELS, PARAMETRIZATIONS, write_json
from hyperinit.train import mup as mup_train, optim


@dataclasses.dataclass
class Point:
  """One training run of the sweep.

  Attributes:
    param: 'sp' or 'mup'.
    width: embed_dim (mlp_dim = mlp_ratio x width).
    seed: init and data-order seed.
    log2_lr: log2 of the peak learning rate.
    status: 'ok' or 'diverged' (a non-finite loss, or a chunk's mean loss above diverge_loss).
    val_loss: mean held-out loss after training (None if diverged), nats/token.
    train_loss: mean training loss over the last tenth of the steps (None if diverged).
    diverged_at: the step whose chunk diverged, or None.
    seconds: wall time of the run (compilation excluded: see `width_program`).
  """
  param: str
  width: int
  seed: int
  log2_lr: float
  status: str
  val_loss: float | None = None
  train_loss: float | None = None
  diverged_at: int | None = None
  seconds: float = 0.0

  @property
  def key(self) -> tuple[str, int, int, float]:
    return (self.param, self.width, self.seed, self.log2_lr)


# --- models and one width's program ---------------------------------------------------------

def model_configs(config: Any, width: int) -> tuple[models.TransformerConfig,
                                                    models.TransformerConfig]:
  """(target at `width`, base at `config.base_width`): same family, depth, heads and vocab."""
  m = config.model
  cfg = models.get_config(m.preset, embed_dim=width, mlp_dim=int(m.mlp_ratio * width),
                          num_layers=int(m.num_layers), num_heads=int(m.num_heads),
                          tie_embeddings=bool(m.tie_embeddings), vocab_size=256,
                          max_len=int(config.data.seq_len))
  bw = int(config.base_width)
  return cfg, cfg.replace(embed_dim=bw, mlp_dim=int(m.mlp_ratio * bw))


def mup_options(config: Any) -> dict[str, Any]:
  """`config.mup` (the trainer's option fields, without base / enabled) as a dict."""
  return {k: config.mup.get(k) for k in mup_train.OPTION_FIELDS}


@dataclasses.dataclass
class WidthProgram:
  """The compiled pieces for one (parametrisation, width)."""
  model_cfg: models.TransformerConfig
  init: Callable[[jax.Array], Any]                    # key -> (params, opt_state)
  train_chunk: Callable[..., Any]                     # (params, opt, inputs, targets, lr) -> ...
  eval_loss: Callable[[Any, Any, Any], jax.Array]     # (params, inputs, targets) -> sum of losses


def width_program(config: Any, param: str, width: int) -> WidthProgram:
  """Model, init and jitted train / eval functions of one width under SP or muP."""
  if param not in PARAMETRIZATIONS:
    raise ValueError(f'parametrisation {param!r}; expected one of {PARAMETRIZATIONS}')
  target, base = model_configs(config, width)
  opt = copy.deepcopy(config.optimizer)
  opt.learning_rate = 1.0                               # unit peak: the sweep's LR scales it
  specs = models.param_specs(target)
  if param == 'mup':
    run = mup_train.build(target, base, mup_options(config))
    model_cfg, mults, transform = run.model_cfg, run.mults, run.init_transform
    tx, _ = optim.from_config(opt, int(config.steps), specs, mults, wd_mode=run.options['wd_mode'],
                    eps_mode=run.options['eps_mode'])
  else:
    model_cfg, transform = target, (lambda p: p)
    tx, _ = optim.from_config(opt, int(config.steps), specs)
  module = models.build(model_cfg)

  def losses(params, inputs, targets):
    logits = module.apply({'params': params}, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)

  @jax.jit
  def init(key):
    params = transform(models.init_params(model_cfg, key))
    return params, tx.init(params)

  def step(carry, batch):
    params, opt_state, lr = carry
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(losses(p, *batch)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: lr * u, updates)
    return (optax.apply_updates(params, updates), opt_state, lr), loss

  def train_chunk(params, opt_state, inputs, targets, lr):
    """inputs, targets: int32 [k, B, T]; lr: f32 []. Returns (params, opt_state, losses [k])."""
    (params, opt_state, _), loss = jax.lax.scan(step, (params, opt_state, lr), (inputs, targets))
    return params, opt_state, loss

  # Compiled ahead of time, once: every learning rate and seed reuses these executables.
  d = config.data
  state = jax.block_until_ready(init(jax.random.key(0)))   # compiles init
  tokens = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  chunk = tokens(int(config.chunk), int(d.batch_size), int(d.seq_len))
  train_exe = jax.jit(train_chunk).lower(*state, chunk, chunk,
                                         jax.ShapeDtypeStruct((), jnp.float32)).compile()
  ev = tokens(int(d.eval_batch_size), int(d.seq_len))
  eval_exe = jax.jit(lambda p, x, y: jnp.sum(losses(p, x, y))).lower(state[0], ev, ev).compile()
  return WidthProgram(model_cfg, init, train_exe, eval_exe)


# --- data ----------------------------------------------------------------------------------

def train_batches(config: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) int32 [steps, B, T] of the training split, in `seed`'s order."""
  d = config.data
  it = iter(data.lm_loader(d.dataset, 'train', seq_len=int(d.seq_len),
                           batch_size=int(d.batch_size), seed=int(seed),
                           data_dir=d.get('data_dir')))
  rows = [next(it) for _ in range(int(config.steps))]
  return (np.stack([r['inputs'] for r in rows]).astype(np.int32),
          np.stack([r['targets'] for r in rows]).astype(np.int32))


def eval_batches(config: Any) -> list[tuple[np.ndarray, np.ndarray]]:
  """The first `config.eval_batches` batches (<= 0: all) of the validation split, fixed."""
  d = config.data
  loader = data.lm_loader(d.dataset, 'validation', seq_len=int(d.seq_len),
                          batch_size=int(d.eval_batch_size), seed=0, num_epochs=1,
                          shuffle=False, data_dir=d.get('data_dir'))
  out = []
  for i, b in enumerate(loader):
    if 0 < int(config.eval_batches) <= i:
      break
    out.append((np.asarray(b['inputs'], np.int32), np.asarray(b['targets'], np.int32)))
  if not out:
    raise ValueError(f'validation split of {d.dataset!r} gave no batch of {d.eval_batch_size}')
  return out


# --- running -------------------------------------------------------------------------------

def run_point(prog: WidthProgram, config: Any, key: jax.Array, batches, evals, log2_lr: float,
              param: str, width: int, seed: int) -> Point:
  """Trains one learning rate from the seed's init and evaluates it."""
  t0 = time.perf_counter()
  params, opt_state = prog.init(key)
  inputs, targets = batches
  steps, chunk = inputs.shape[0], int(config.chunk)
  lr = jnp.float32(2.0 ** log2_lr)
  losses = []
  for start in range(0, steps, chunk):
    sl = slice(start, start + chunk)
    params, opt_state, loss = prog.train_chunk(params, opt_state, inputs[sl], targets[sl], lr)
    loss = np.asarray(loss)
    losses.append(loss)
    # Single batches of unusual text can spike the loss; a whole chunk above the bar cannot.
    if not np.all(np.isfinite(loss)) or np.mean(loss) > float(config.diverge_loss):
      bad = int(np.argmax(~np.isfinite(loss))) if not np.all(np.isfinite(loss)) else chunk - 1
      return Point(param, width, seed, log2_lr, 'diverged', diverged_at=start + bad + 1,
                   seconds=time.perf_counter() - t0)
  total = count = 0.0
  for x, y in evals:
    total += float(prog.eval_loss(params, x, y))
    count += x.size
  val = total / count
  tail = np.concatenate(losses)[-max(1, steps // 10):]
  status = 'ok' if math.isfinite(val) else 'diverged'
  return Point(param, width, seed, log2_lr, status, val if status == 'ok' else None,
               float(np.mean(tail)), seconds=time.perf_counter() - t0)


# The grid: points of a sweep that differs from a saved one only in these can be reused.
GRID_FIELDS = ('widths', 'parametrizations', 'seeds', 'log2_lrs')


def _run_fields(conf: dict[str, Any]) -> dict[str, Any]:
  """The config fields that change what one point computes (all but the grid)."""
  return {k: v for k, v in conf.items() if k not in GRID_FIELDS}


# Compiled programs of this process, by (run fields as JSON, parametrisation, width), for the
# latest run fields only: a notebook or test that calls run_sweep again (a grown grid, a
# resume) does not recompile, and memory holds one sweep's programs at most.
_PROGRAMS: dict[tuple[str, str, int], WidthProgram] = {}


def _cached_program(config: Any, conf: dict[str, Any], param: str, width: int) -> WidthProgram:
  key = (json.dumps(_run_fields(conf), sort_keys=True), param, width)
  if key not in _PROGRAMS:
    for k in [k for k in _PROGRAMS if k[0] != key[0]]:
      del _PROGRAMS[k]
    _PROGRAMS[key] = width_program(config, param, width)
  return _PROGRAMS[key]


def saved_points(path: str, conf: dict[str, Any], log: Callable[[str], None] = print,
                 ) -> dict[tuple, Point]:
  """The points in results.json at `path` that a sweep with config `conf` (as JSON) can reuse.

  All of them when the saved config differs from `conf` only in the grid
  (`GRID_FIELDS`); none when it differs in anything else or there is no file.
  """
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    prev = json.load(f)
  old = prev.get('config')
  if not isinstance(old, dict) or not isinstance(prev.get('points'), list):
    raise ValueError(f'{path}: expected a sweep results.json with "config" and "points"')
  if _run_fields(old) != _run_fields(conf):
    changed = sorted(k for k in set(_run_fields(conf)) | set(_run_fields(old))
                     if conf.get(k) != old.get(k))
    log(f'{path} was written with other {changed}: starting over')
    return {}
  done = {p.key: p for p in (Point(**d) for d in prev['points'])}
  log(f'resuming: {len(done)} points already in {path}')
  return done


def run_sweep(config: Any, workdir: str | None = None, log: Callable[[str], None] = print,
              ) -> dict[str, Any]:
  """Runs every (width, parametrisation, seed, learning rate) of `config`.

  With a workdir, results.json is rewritten (atomically) after every point and
  a rerun skips the points already there when only the grid (`GRID_FIELDS`)
  differs; any other change (steps, model, optimizer, data, muP options)
  starts over.

  Returns:
    {'config': config as a dict, 'points': [Point as dict], 'seconds': wall time of this call}.
  """
  t_start = time.perf_counter()
  if int(config.steps) % int(config.chunk):
    raise ValueError(f'config.steps={config.steps} must be a multiple of config.chunk='
                     f'{config.chunk}')
  conf = json.loads(config.to_json_best_effort())
  path = os.path.join(workdir, 'results.json') if workdir else None
  done = saved_points(path, conf, log) if path else {}
  params_list = [p.strip() for p in config.parametrizations.split(',') if p.strip()]
  bad = [p for p in params_list if p not in PARAMETRIZATIONS]
  if bad or not params_list:
    raise ValueError(f'config.parametrizations={config.parametrizations!r}: expected a comma-'
                     f'separated subset of {PARAMETRIZATIONS}')
  seeds = list(range(int(config.seeds)))
  lrs = [float(x) for x in config.log2_lrs]
  evals = eval_batches(config)
  data_cache = {s: train_batches(config, s) for s in seeds}
  todo = [(w, p, s, lr) for w in config.widths for p in params_list for s in seeds for lr in lrs]
  n_left = sum((p, int(w), s, lr) not in done for w, p, s, lr in todo)
  log(f'{len(todo)} points ({n_left} to run): widths {tuple(config.widths)}, {params_list}, '
      f'{len(seeds)} seeds, log2 lr {lrs[0]:g}..{lrs[-1]:g}, {config.steps} steps of '
      f'{config.data.batch_size}x{config.data.seq_len} tokens')
  ran = 0
  for width in config.widths:
    for param in params_list:
      if all((param, int(width), s, lr) in done for s in seeds for lr in lrs):
        continue
      t0 = time.perf_counter()
      prog = _cached_program(config, conf, param, int(width))
      log(f'== {LABELS[param]} width {width}: {models.count_params(prog.model_cfg) / 1e6:.2f}M '
          f'params, ready (compiled or cached) in {time.perf_counter() - t0:.1f}s')
      for seed in seeds:
        for lr in lrs:
          if (param, int(width), seed, lr) in done:
            continue
          pt = run_point(prog, config, jax.random.key(seed), data_cache[seed], evals, lr, param,
                         int(width), seed)
          done[pt.key] = pt
          ran += 1
          elapsed = time.perf_counter() - t_start
          log(f'{LABELS[param]:>3} w={width:<4d} seed={seed} log2_lr={lr:+5.1f}: '
              + (f'val {pt.val_loss:.4f} train {pt.train_loss:.4f}' if pt.status == 'ok'
                 else f'DIVERGED at step {pt.diverged_at}')
              + f'  ({pt.seconds:.1f}s; {ran}/{n_left} in {elapsed / 60:.1f} min)')
          if path:
            write_json(path, {'config': conf, 'points': [dataclasses.asdict(p) for p in
                                                           done.values()]})
  points = [dataclasses.asdict(done[(p, int(w), s, lr)]) for w, p, s, lr in todo]
  return {'config': conf, 'points': points, 'seconds': time.perf_counter() - t_start}
