"""µTransfer sweeps (Tensor Programs V, Fig. 1): loss vs log2 LR across widths or depths, SP vs muP.

For every (parametrisation, width, depth, seed, log2 LR) of `config`, our GPT
trains `config.steps` steps on the embedded corpus and is evaluated on the
*whole* validation split.  A width sweep varies `config.widths` at one depth
(muP against `base_width`); a depth sweep varies `config.depths` at one width
(muP with `config.mup.depth_alpha`, 1 = CompleteP, against `base_depth`).
muP runs use the base hyper-parameters of `config.mup` (or of the JSON that
`mup_search.run_search` writes, `config.base_hps_file`), the same at every size.

    results = run_sweep(config, workdir)   # workdir/results.json, metrics.jsonl; resumable
    sweep_report.write_outputs(workdir, results)   # summary.json, table.md, sweep.png

All runs of one (parametrisation, width, depth) share one compiled program:
the peak LR is a traced argument (the optimizer runs with a unit-peak
schedule and its update is scaled by it: exact for every chain the trainer
builds, whose last step is `scale_by_learning_rate` and whose decay is
multiplied by it) and the steps run in `lax.scan` chunks.  A run whose loss
turns non-finite, or whose mean loss over a chunk exceeds
`config.diverge_loss`, stops and is recorded as diverged.  Models, init and
optimizer are what the trainer builds for `config.mup` (`hyperinit.train.mup`).
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

from hyperinit import data, models, mup
from hyperinit.studies import mup_baselines
from hyperinit.studies.mup_sweep_report import LABELS, PARAMETRIZATIONS, write_json
from hyperinit.train import metrics, mup as mup_train, optim


@dataclasses.dataclass
class Record:
  """One training run (one row of results.json / docs/results/mup_*_sweep.json).

  Attributes:
    param: 'sp' or 'mup'.
    width: embed_dim (mlp_dim = mlp_ratio x width).
    depth: number of blocks.
    seed: init and data-order seed.
    log2_lr: log2 of the peak learning rate.
    val_loss: mean loss over the whole validation split, nats/token (None if diverged).
    train_tail_loss: mean training loss over the last `tail_fraction` of the steps
      (None if diverged).
    diverged: a non-finite loss, or a chunk's mean loss above diverge_loss.
    diverged_at: the step whose chunk diverged, or None.
    seconds: wall time of the run (compilation excluded).
    curve: mean training loss of each chunk of `config.chunk` steps (to the divergence).
  """
  param: str
  width: int
  depth: int
  seed: int
  log2_lr: float
  val_loss: float | None = None
  train_tail_loss: float | None = None
  diverged: bool = False
  diverged_at: int | None = None
  seconds: float = 0.0
  curve: list[float] | None = None

  @property
  def key(self) -> tuple[str, int, int, int, float]:
    return (self.param, self.width, self.depth, self.seed, self.log2_lr)


# --- base hyper-parameters and the LR grid ----------------------------------------------------

def load_base_hps(config: Any) -> tuple[mup.BaseHParams, dict[str, float]]:
  """(base HPs, LR centres) of a sweep: `config.base_hps_file` (a `mup_search` JSON) when set,
  else `config.mup`'s base HP fields with `config.base_log2_lr` / `config.sp_base_log2_lr`."""
  path = config.get('base_hps_file') or ''
  if path:
    with open(path) as f:
      saved = json.load(f)
    for k in ('base_hps', 'log2_lr', 'sp_log2_lr'):
      if k not in saved:
        raise ValueError(f'{path}: not a base-HP search result (no {k!r}); run '
                         'experiments.mup_sweep with configs/mup_sweep.py:search first')
    if saved.get('steps') is not None and int(saved['steps']) != int(config.steps):
      raise ValueError(f'{path} was tuned for {saved["steps"]} steps, this sweep trains '
                       f'{config.steps}: rerun the search with the same steps (base HPs and LR '
                       'depend on the training length)')
    return (mup.BaseHParams.from_dict(saved['base_hps']),
            {'mup': float(saved['log2_lr']), 'sp': float(saved['sp_log2_lr'])})
  fields = {k: config.mup.get(k) for k in mup_train.HPARAM_FIELDS
            if config.mup.get(k) is not None}
  return (mup.BaseHParams.from_dict(fields),
          {'mup': float(config.base_log2_lr), 'sp': float(config.sp_base_log2_lr)})


def lr_grid(config: Any, param: str, width: int, depth: int, centres: dict[str, float]
            ) -> list[float]:
  """log2 LRs of (param, width, depth): centre + slope x log2(size / base size) + offsets.

  muP's centre stays put (that is the claim under test); SP's moves by
  `config.sp_lr_slope` per doubling of width (Adam under SP: LR ~ 1/width, slope -1), so a
  short window follows it; an optimum on a window's edge is flagged by the report.
  """
  ratio = width / int(config.base_width) if config.mode == 'width' else \
      depth / int(config.base_depth)
  slope = float(config.sp_lr_slope) if param == 'sp' else 0.0
  centre = centres[param] + round(slope * math.log2(ratio))
  return [float(centre + o) for o in config.lr_offsets[param]]


# --- models and one (parametrisation, width, depth)'s program ---------------------------------

def model_configs(config: Any, width: int, depth: int) -> tuple[models.TransformerConfig,
                                                               models.TransformerConfig]:
  """(target at width x depth, base at base_width x base_depth): same family, heads, vocab."""
  m = config.model
  cfg = models.get_config(m.preset, embed_dim=width, mlp_dim=int(m.mlp_ratio * width),
                          num_layers=depth, num_heads=int(m.num_heads),
                          tie_embeddings=bool(m.tie_embeddings), vocab_size=256,
                          max_len=int(config.data.seq_len))
  bw = int(config.base_width)
  return cfg, cfg.replace(embed_dim=bw, mlp_dim=int(m.mlp_ratio * bw),
                          num_layers=int(config.base_depth))


def mup_options(config: Any, hps: mup.BaseHParams) -> dict[str, Any]:
  """`config.mup` (the trainer's option fields) with the base HPs `hps`, as a dict."""
  out = {k: config.mup.get(k) for k in mup_train.OPTION_FIELDS}
  out.update(hps.to_dict())
  return out


@dataclasses.dataclass
class Program:
  """The compiled pieces of one (parametrisation, width, depth)."""
  model_cfg: models.TransformerConfig
  init: Callable[[jax.Array], Any]                  # key -> (params, opt_state)
  train_chunk: Callable[..., Any]                   # (params, opt, inputs, targets, lr) -> ...
  eval_loss: Callable[..., jax.Array]               # (params, inputs, targets, weights) -> sum


def build_program(config: Any, param: str, width: int, depth: int,
                  hps: mup.BaseHParams) -> Program:
  """Model, init and compiled train / eval functions under SP or muP (with `hps`)."""
  if param not in PARAMETRIZATIONS:
    raise ValueError(f'parametrisation {param!r}; expected one of {PARAMETRIZATIONS}')
  target, base = model_configs(config, width, depth)
  opt = copy.deepcopy(config.optimizer)
  opt.learning_rate = 1.0                           # unit peak: the sweep's LR scales it
  specs = models.param_specs(target)
  if param == 'mup':
    run = mup_train.build(target, base, mup_options(config, hps))
    model_cfg, transform = run.model_cfg, run.init_transform
    tx, _ = run.optimizer(opt, int(config.steps), specs)
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
  state = jax.block_until_ready(init(jax.random.key(0)))
  tokens = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  chunk = tokens(int(config.chunk), int(d.batch_size), int(d.seq_len))
  train_exe = jax.jit(train_chunk).lower(*state, chunk, chunk,
                                         jax.ShapeDtypeStruct((), jnp.float32)).compile()
  ev = tokens(int(d.eval_batch_size), int(d.seq_len))
  weights = jax.ShapeDtypeStruct((int(d.eval_batch_size), 1), jnp.float32)
  eval_exe = jax.jit(lambda p, x, y, w: jnp.sum(w * losses(p, x, y))).lower(
      state[0], ev, ev, weights).compile()
  return Program(model_cfg, init, train_exe, eval_exe)


# --- data ---------------------------------------------------------------------------------------

def train_batches(config: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) int32 [steps, B, T] of the training split, in `seed`'s order."""
  d = config.data
  it = iter(data.lm_loader(d.dataset, 'train', seq_len=int(d.seq_len),
                           batch_size=int(d.batch_size), seed=int(seed),
                           data_dir=d.get('data_dir')))
  rows = [next(it) for _ in range(int(config.steps))]
  return (np.stack([r['inputs'] for r in rows]).astype(np.int32),
          np.stack([r['targets'] for r in rows]).astype(np.int32))


def validation_rows(config: Any) -> tuple[np.ndarray, np.ndarray]:
  """Every packed row of the validation split: (inputs, targets) int32 [R, T]."""
  d = config.data
  rows = [(np.asarray(b['inputs'][0], np.int32), np.asarray(b['targets'][0], np.int32))
          for b in data.lm_loader(d.dataset, 'validation', seq_len=int(d.seq_len), batch_size=1,
                                  seed=0, num_epochs=1, shuffle=False, data_dir=d.get('data_dir'))]
  if not rows:
    raise ValueError(f'validation split of {d.dataset!r} holds no row of {d.seq_len} tokens')
  return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def eval_batches(config: Any, rows: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, ...]]:
  """`rows` in batches of eval_batch_size; the last one zero-padded with weight 0 rows."""
  x, y = rows
  b = int(config.data.eval_batch_size)
  out = []
  for i in range(0, len(x), b):
    n = min(b, len(x) - i)
    pad = lambda a: np.concatenate([a[i:i + n], np.zeros((b - n,) + a.shape[1:], a.dtype)])
    w = np.concatenate([np.ones((n, 1), np.float32), np.zeros((b - n, 1), np.float32)])
    out.append((pad(x), pad(y), w))
  return out


# --- running ------------------------------------------------------------------------------------

def run_one(prog: Program, config: Any, batches, evals, n_eval_tokens: int, param: str,
            width: int, depth: int, seed: int, log2_lr: float) -> Record:
  """Trains one learning rate from the seed's init and evaluates it on the validation rows."""
  t0 = time.perf_counter()
  params, opt_state = prog.init(jax.random.key(seed))
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
      return Record(param, width, depth, seed, log2_lr, diverged=True,
                    diverged_at=start + bad + 1, seconds=time.perf_counter() - t0,
                    curve=[float(np.mean(l)) for l in losses])
  total = sum(float(prog.eval_loss(params, *b)) for b in evals)
  val = total / n_eval_tokens
  tail = np.concatenate(losses)[-max(1, int(round(steps * float(config.tail_fraction)))):]
  ok = math.isfinite(val)
  return Record(param, width, depth, seed, log2_lr, val if ok else None,
                float(np.mean(tail)) if ok else None, diverged=not ok,
                seconds=time.perf_counter() - t0, curve=[float(np.mean(l)) for l in losses])


def log_run(workdir: str, rec: Record, chunk: int, name: str | None = None) -> None:
  """Appends `rec` to workdir/metrics.jsonl and writes its curve as the TensorBoard run
  workdir/tb/<name> (train/loss per chunk, eval/loss at the end), e.g. `tensorboard --logdir`."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({**dataclasses.asdict(rec), 'time': time.time()}) + '\n')
  name = name or f'{rec.param}_w{rec.width}_L{rec.depth}_s{rec.seed}_lr{rec.log2_lr:+g}'
  series = {'train/loss': [((i + 1) * chunk, v) for i, v in enumerate(rec.curve or [])]}
  if rec.val_loss is not None:
    series['eval/loss'] = [(len(rec.curve or []) * chunk, rec.val_loss)]
  metrics.write_tensorboard(os.path.join(workdir, 'tb', name), series)


# Grid fields: a saved sweep that differs from this one only in these keeps its records.
GRID_FIELDS = ('widths', 'depths', 'parametrizations', 'seeds', 'lr_offsets', 'results_file',
               'search')


def run_fields(conf: dict[str, Any]) -> dict[str, Any]:
  """The config fields that change what one run computes (all but the grid)."""
  return {k: v for k, v in conf.items() if k not in GRID_FIELDS}


def saved_records(path: str, conf: dict[str, Any], log: Callable[[str], None] = print,
                  ) -> dict[tuple, Record]:
  """The records in results.json at `path` that a sweep with config `conf` can reuse: all of
  them when the saved config differs only in the grid (`GRID_FIELDS`), else none."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    prev = json.load(f)
  old = prev.get('config')
  if not isinstance(old, dict) or not isinstance(prev.get('records'), list):
    raise ValueError(f'{path}: expected a sweep results.json with "config" and "records"')
  if run_fields(old) != run_fields(conf):
    changed = sorted(k for k in set(run_fields(conf)) | set(run_fields(old))
                     if conf.get(k) != old.get(k))
    log(f'{path} was written with other {changed}: starting over')
    return {}
  done = {r.key: r for r in (Record(**d) for d in prev['records'])}
  log(f'resuming: {len(done)} records already in {path}')
  return done


def plan(config: Any, centres: dict[str, float]) -> list[tuple[str, int, int, int, float]]:
  """Every (param, width, depth, seed, log2_lr) of the sweep, in run order."""
  params = [p.strip() for p in config.parametrizations.split(',') if p.strip()]
  bad = [p for p in params if p not in PARAMETRIZATIONS]
  if bad or not params:
    raise ValueError(f'config.parametrizations={config.parametrizations!r}: expected a comma-'
                     f'separated subset of {PARAMETRIZATIONS}')
  if config.mode not in ('width', 'depth'):
    raise ValueError(f"config.mode={config.mode!r}: run_sweep runs 'width' or 'depth' sweeps")
  return [(p, int(w), int(d), s, lr) for w in config.widths for d in config.depths
          for p in params for s in range(int(config.seeds))
          for lr in lr_grid(config, p, int(w), int(d), centres)]


def _eta(done_cost: float, done_s: float, todo_cost: float) -> str:
  if done_cost <= 0:
    return '?'
  return f'{todo_cost * done_s / done_cost / 60:.1f} min'


def run_sweep(config: Any, workdir: str | None = None, log: Callable[[str], None] = print,
              ) -> dict[str, Any]:
  """Runs every record of `config` (see `plan`); with a workdir, resumable.

  results.json is rewritten (atomically) after every run and a line appended to
  metrics.jsonl; a rerun skips the records already there when only the grid
  (`GRID_FIELDS`) differs.  Progress lines give an ETA from the measured
  seconds per (parameter x step) so far.

  Returns:
    {'config', 'mode', 'base_hps', 'lr_centres', 'baselines', 'records': [Record as dict],
     'seconds'}.
  """
  t_start = time.perf_counter()
  if int(config.steps) % int(config.chunk):
    raise ValueError(f'config.steps={config.steps} must be a multiple of config.chunk='
                     f'{config.chunk}')
  hps, centres = load_base_hps(config)
  conf = json.loads(config.to_json_best_effort())
  conf['base_hps_used'], conf['lr_centres_used'] = hps.to_dict(), centres
  path = os.path.join(workdir, 'results.json') if workdir else None
  done = saved_records(path, conf, log) if path else {}
  todo = plan(config, centres)
  rows = validation_rows(config)
  evals, n_eval = eval_batches(config, rows), int(rows[1].size)
  seeds = sorted({t[3] for t in todo})
  data_cache = {s: train_batches(config, s) for s in seeds}
  baselines = mup_baselines.sweep_baselines(config, data_cache[seeds[0]], rows)
  cost = {}                                        # (param, width, depth) -> params x steps
  for p, w, d, _, _ in todo:
    if (p, w, d) not in cost:
      cost[(p, w, d)] = models.count_params(model_configs(config, w, d)[0]) * int(config.steps)
  left = [t for t in todo if t not in done]
  log(f'{config.mode} sweep: {len(todo)} runs ({len(left)} to run), widths '
      f'{tuple(config.widths)}, depths {tuple(config.depths)}, {len(seeds)} seeds, '
      f'{config.steps} steps of {config.data.batch_size}x{config.data.seq_len} tokens; '
      f'validation {n_eval} tokens; bigram {baselines["bigram_seen"]:.4f}, unigram '
      f'{baselines["unigram_seen"]:.4f} (fitted on the {baselines["seen_tokens"]} training '
      f'tokens a run sees)')
  result = lambda: {'config': conf, 'mode': config.mode, 'base_hps': hps.to_dict(),
                    'lr_centres': centres, 'baselines': baselines,
                    'records': [dataclasses.asdict(done[t]) for t in todo if t in done]}
  done_cost = done_s = 0.0
  progs: dict[tuple, Program] = {}
  for i, t in enumerate(left):
    p, w, d, s, lr = t
    if (p, w, d) not in progs:
      progs.clear()                                 # one program in memory at a time
      t0 = time.perf_counter()
      progs[(p, w, d)] = build_program(config, p, w, d, hps)
      log(f'== {LABELS[p]} width {w} depth {d}: '
          f'{models.count_params(progs[(p, w, d)].model_cfg) / 1e6:.2f}M params, compiled in '
          f'{time.perf_counter() - t0:.1f}s')
    rec = run_one(progs[(p, w, d)], config, data_cache[s], evals, n_eval, p, w, d, s, lr)
    done[t] = rec
    done_cost += cost[(p, w, d)]
    done_s += rec.seconds
    todo_cost = sum(cost[(q[0], q[1], q[2])] for q in left[i + 1:])
    log(f'{LABELS[p]:>3} w={w:<4d} L={d:<2d} seed={s} log2_lr={lr:+5.1f}: '
        + (f'val {rec.val_loss:.4f} train-tail {rec.train_tail_loss:.4f}' if not rec.diverged
           else f'DIVERGED at step {rec.diverged_at}')
        + f'  ({rec.seconds:.1f}s; {i + 1}/{len(left)}, '
          f'{(time.perf_counter() - t_start) / 60:.1f} min so far, ETA '
          f'{_eta(done_cost, done_s, todo_cost)})')
    if workdir:
      write_json(path, result())
      log_run(workdir, rec, int(config.chunk))
  return {**result(), 'seconds': time.perf_counter() - t_start}
