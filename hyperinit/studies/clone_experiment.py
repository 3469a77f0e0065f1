"""Clone-then-train experiments: the `make demo` job and the paper's comparison at small scale.

    from configs import clone
    results = experiment.run(clone.get_config('demo'), 'workdir/demo')

For every seed: train the source (a small model), clone it (`clone_job.clone_checkpoint`,
orbax output), check that the clone's logits equal the source's on a validation
batch (fp32; a failure stops the run), train each clone variant and a randomly
initialised model of the destination's architecture with the same trainer
config (steps, schedule, batch, data order, seed), logging the symmetry
diagnostic at every evaluation.  Then `report.write_report` states the speedups.

Everything runs through `train.train_and_evaluate`, so each run is an ordinary
trainer workdir (metrics.jsonl, TensorBoard, checkpoints) and a rerun of the
same command resumes or skips finished runs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from hyperinit import checkpoint as ckpt_lib
from hyperinit import models
from hyperinit.cloning import config as clone_config_lib
from hyperinit.cloning import factors as factors_lib
from hyperinit.cloning import plan as plan_lib
from hyperinit.cloning.symmetry import symmetry_fn
from hyperinit.studies import clone_report as report
from hyperinit.train import clone_job
from hyperinit.train import loop, metrics as metrics_lib, tasks


class CloneCheckError(RuntimeError):
  """The clone's logits differ from the source's beyond the tolerance."""


@dataclasses.dataclass
class RunRecord:
  """One training run, read back from its metrics.jsonl.

  Attributes:
    name: e.g. 'source', 'noisy_symmetric', 'random', 'symmetric+dropout0.1'.
    kind: 'source' | 'clone' | 'random'.
    seed: the run's seed.
    variant: the clone variant ('' for source / random).
    dropout: dropout rate of the run.
    workdir: the trainer workdir.
    steps: num_train_steps.
    evals: [(step, validation loss)].
    symmetry: [(step, symmetry/overall)] (clone and random runs).
    train: [(step, train loss)].
    wall_s: seconds this process spent on the run (0 if it was already complete).
  """
  name: str
  kind: str
  seed: int
  variant: str
  dropout: float
  workdir: str
  steps: int
  evals: list
  symmetry: list
  train: list
  wall_s: float

  @property
  def final_loss(self) -> float:
    return self.evals[-1][1]


def say(msg: str) -> None:
  print(msg, flush=True)


def banner(msg: str) -> None:
  say(f'\n===== {msg} =====')


def _record(name, kind, seed, variant, dropout, workdir, steps, wall) -> RunRecord:
  # one row per (split, step), the last written: a resumed run may log a step again
  rows = list({(r['split'], r['step']): r for r in metrics_lib.read_jsonl(workdir)}.values())
  rows.sort(key=lambda r: r['step'])
  ev = [(r['step'], r['loss']) for r in rows if r['split'] == 'eval']
  sym = [(r['step'], r['symmetry/overall']) for r in rows
         if r['split'] == 'eval' and 'symmetry/overall' in r]
  tr = [(r['step'], r['loss']) for r in rows if r['split'] == 'train']
  return RunRecord(name, kind, seed, variant, dropout, workdir, steps, ev, sym, tr, wall)


def _latest(workdir: str) -> int | None:
  ck = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ck):
    return None
  return ckpt_lib.Checkpointer(ck, read_only=True).latest_step()


def _done(workdir: str, steps: int) -> bool:
  return _latest(workdir) == steps


def _train(name: str, config: Any, workdir: str, **kw) -> float:
  """train_and_evaluate with a banner; returns wall seconds (0 when already complete)."""
  steps = int(config.num_train_steps)
  if _done(workdir, steps):
    say(f'{name}: already trained ({workdir}); reusing it')
    return 0.0
  t = time.perf_counter()
  loop.train_and_evaluate(config, workdir, **kw)
  wall = time.perf_counter() - t
  say(f'{name}: {steps} steps in {wall:.0f} s')
  return wall


def _model_fields(cfg: models.ModelConfig) -> dict[str, Any]:
  d = cfg.to_dict()
  return {k: v for k, v in d.items() if k not in tasks.RUNTIME_FIELDS}


def random_config(target: Any, source_model: Any, dst_cfg: models.ModelConfig) -> Any:
  """The trainer config of the random-init baseline: `target` with the source's model
  preset widened to the destination's sizes; checked equal to `dst_cfg`."""
  c = copy.deepcopy(target)
  c.unlock()
  c.model = copy.deepcopy(source_model)
  c.model.unlock()
  for f in ('num_layers', 'embed_dim', 'num_heads', 'num_kv_heads', 'mlp_dim', 'head_dim'):
    if getattr(dst_cfg, f) is not None or f in c.model:
      c.model[f] = getattr(dst_cfg, f)
  c.init_from = ''
  got = tasks.resolve_model_config(c)
  diff = {k: (v, _model_fields(dst_cfg).get(k)) for k, v in _model_fields(got).items()
          if _model_fields(dst_cfg).get(k) != v}
  if diff:
    raise ValueError(f'the random baseline would not have the clone\'s architecture: {diff} '
                     '(random, clone)')
  return c


def _with(config: Any, **fields) -> Any:
  c = copy.deepcopy(config)
  c.unlock()
  for key, v in fields.items():
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def validation_inputs(config: Any, model_cfg: models.ModelConfig, n: int = 4) -> np.ndarray:
  """The first `n` rows of the first validation batch: int32 [n, seq_len]."""
  task = tasks.make_task(config, model_cfg)
  loader = tasks.make_loader(config, task, tasks.eval_split(config), train=False,
                             seed=int(config.seed))
  return np.asarray(next(iter(loader))['inputs'])[:n]


def clone_factors(c: Any) -> dict[str, Any]:
  """The factor dict of `config.clone` (factor + attention + per-axis overrides)."""
  f = factors_lib.factors_for(c.factor, c.attention)
  for ax in ('embed', 'mlp', 'heads', 'head_dim'):
    if c.get(ax) is not None:
      f[ax] = c[ax]
  return f


def _symmetry(plan: plan_lib.ClonePlan) -> Callable[[Any], Any]:
  fn = symmetry_fn(plan.dst_specs, plan.factor_dict)
  return lambda params: {'symmetry/overall': fn(params)['symmetry/overall']}


def train_source(config: Any, workdir: str, seed: int,
                 stage: Callable[[str], None]) -> tuple[clone_job.Source, RunRecord]:
  """Trains (or reuses) the source model of `config.source` in `workdir`; returns it."""
  src_conf = _with(config.source, seed=seed)
  stage(f'train the source model (seed {seed})')
  wall = _train('source', src_conf, workdir)
  steps = int(src_conf.num_train_steps)
  rec = _record('source', 'source', seed, '', 0.0, workdir, steps, wall)
  src_params, src_cfg = ckpt_lib.load_params(workdir)
  return clone_job.Source(src_cfg, src_params, 'orbax', workdir, steps), rec


def train_clones(config: Any, src: clone_job.Source, workdir: str, seed: int,
                 stage: Callable[[str], None], random_dir: str | None = None,
                 train_random: bool = True, src_final: float | None = None) -> dict[str, Any]:
  """Clones `src` (`config.clone`), checks the logits, trains each clone run and random init.

  Clone inits and runs go to `workdir`; the random-init run to `random_dir`
  (default `workdir/random`), trained only when `train_random` (otherwise an
  already trained run there is read: arms that share a baseline).  With
  `config.clone.with_opt_state` each clone run resumes the source's run wider;
  its curve is reported from the resume step, starting at `src_final` (the
  source's final validation loss: the clone computes the same function).
  Returns {'runs': [RunRecord] (clones, then random), 'checks', 'dst_cfg', 'plan'}.
  """
  os.makedirs(workdir, exist_ok=True)
  src_conf = _with(config.source, seed=seed)
  inputs = validation_inputs(src_conf, src.cfg)
  checks, runs, clones = [], [], {}
  plan_any = dst_any = None
  for variant, rate in _clone_runs(config, seed):
    name = variant + (f'+dropout{rate:g}' if rate else '')
    resume = bool(config.clone.get('with_opt_state'))
    run_dir = os.path.join(workdir, name)
    # a resumed run's clone is its own workdir (widened TrainState at the source's step)
    init_dir = run_dir if resume else os.path.join(workdir, f'init_{variant}')
    # a resumed run already holds its clone (and maybe progress): never clone over it
    if variant not in clones and not (resume and _latest(run_dir) is not None):
      stage(f'clone {config.clone.factor}x ({variant}, seed {seed}) and check the logits')
      t = time.perf_counter()
      res = clone_job.clone_checkpoint(src, init_dir, clone_factors(config.clone),
                                       variant=variant, snr_db=float(config.clone.snr_db),
                                       seed=seed, fmt='orbax', overwrite=True,
                                       kv_rule=config.clone.kv_rule, tie=config.clone.tie,
                                       check=False, with_opt_state=resume)
      err = clone_job.logits_relative_error(src.cfg, src.params, res.dst_cfg, res.params, inputs)
      say(res.summary)
      say(f'logits on {inputs.shape[0]}x{inputs.shape[1]} validation tokens: max |clone - '
          f'source| / max |source| = {err:.2e} (tolerance {config.logits_rtol:g}) '
          f'[{time.perf_counter() - t:.1f} s]')
      if not err <= float(config.logits_rtol):
        raise CloneCheckError(f'the {variant} clone is NOT function-preserving: max relative '
                              f'logit error {err:.3g} > {config.logits_rtol:g}')
      checks.append({'variant': variant, 'seed': seed, 'rel_error': err})
      clones[variant] = res
    if variant not in clones:   # a started resumed run: plan it again (no clone needed)
      plan, dst_cfg = clone_config_lib.plan_model(src.cfg, clone_factors(config.clone), variant,
                                          float(config.clone.snr_db), kv_rule=config.clone.kv_rule,
                                          tie=config.clone.tie)
      clones[variant] = clone_job.CloneResult(src, run_dir, 'orbax', dst_cfg, plan, None, None, '')
    res = clones[variant]
    plan_any, dst_any = res.plan, res.dst_cfg
    if resume:
      steps = src.step + int(config.target.num_train_steps)
      conf = _with(config.target, seed=seed, init_from='', num_train_steps=steps,
                   **{'model.name': 'init_from', 'checkpoint.every': steps,
                      'optimizer.warmup_steps': int(config.source.optimizer.warmup_steps)})
    else:
      conf = _with(config.target, seed=seed, init_from=init_dir, **{'model.name': 'init_from'})
    if rate:
      conf.model.dropout_rate = rate
    stage(f'train the clone ({name}, seed {seed})')
    wall = _train(name, conf, run_dir, eval_metrics_fn=_symmetry(res.plan))
    rec = _record(name, 'clone', seed, variant, rate, run_dir, int(conf.num_train_steps), wall)
    if resume:   # steps from the resume; step 0 is the source's final loss (same function)
      if src_final is None:
        raise ValueError('config.clone.with_opt_state: train_clones needs src_final')
      rec.evals = [(0, src_final)] + [(s - src.step, v) for s, v in rec.evals if s > src.step]
      rec.symmetry = [(s - src.step, v) for s, v in rec.symmetry]
      rec.train = [(s - src.step, v) for s, v in rec.train]
      rec.steps -= src.step
    runs.append(rec)
  rconf = _with(random_config(config.target, config.source.model, dst_any), seed=seed)
  random_dir = random_dir or os.path.join(workdir, 'random')
  steps = int(rconf.num_train_steps)
  wall = 0.0
  if train_random:
    stage(f'train the random-init model of the same width (seed {seed})')
    wall = _train('random', rconf, random_dir, eval_metrics_fn=_symmetry(plan_any))
  elif not _done(random_dir, steps):
    raise ValueError(f'the shared random-init baseline {random_dir} is not trained '
                     f'({steps} steps): train the arm that owns it first')
  else:   # a shared baseline must be this arm's destination architecture
    have = _model_fields(ckpt_lib.read_model_config(random_dir))
    want = _model_fields(dst_any)
    diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if diff:
      raise ValueError(f'the shared random-init baseline {random_dir} is another architecture '
                       f'than this clone: {diff} (baseline, clone)')
  runs.append(_record('random', 'random', seed, '', 0.0, random_dir, steps, wall))
  return {'runs': runs, 'checks': checks, 'dst_cfg': dst_any, 'plan': plan_any}


def run_seed(config: Any, workdir: str, seed: int, stage: Callable[[str], None]) -> dict[str, Any]:
  """Source, clones, random baseline for one seed; returns records and checks."""
  src, src_rec = train_source(config, os.path.join(workdir, 'source'), seed, stage)
  out = train_clones(config, src, workdir, seed, stage, src_final=src_rec.final_loss)
  return {'runs': [src_rec] + out['runs'], 'checks': out['checks'], 'src_cfg': src.cfg,
          'dst_cfg': out['dst_cfg']}


def _clone_runs(config: Any, seed: int) -> list[tuple[str, float]]:
  """(variant, dropout rate) of every clone run of a seed.

  Every seed trains `variants[0]`; the other variants only the seeds in
  `config.ablation_seeds` (None: all seeds).
  """
  abl = config.get('ablation_seeds')
  variants = (tuple(config.variants) if abl is None or seed in tuple(abl)
              else tuple(config.variants)[:1])
  out = [(v, 0.0) for v in variants]
  if seed in tuple(config.dropout.seeds):
    out += [(v, float(config.dropout.rate)) for v in config.dropout.variants]
  return out


def _n_stages(config: Any, seed: int) -> int:
  """Stages of a seed: source, a clone per variant, a training run per clone run, random."""
  runs = _clone_runs(config, seed)
  return 2 + len({v for v, _ in runs}) + len(runs)


def cpu_seconds() -> float:
  """User + system CPU seconds of this process (all threads): a load-independent cost."""
  import resource  # pylint: disable=g-import-not-at-top
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs every seed of `config` (configs/clone.py) in `workdir` and writes the report.

  Returns the results dict also written to `<workdir>/results.json`.
  Raises CloneCheckError when a clone does not preserve the logits.
  """
  metrics_lib.quiet_libraries()
  t0, cpu0 = time.perf_counter(), cpu_seconds()
  workdir = os.path.abspath(workdir)   # orbax refuses relative checkpoint paths
  seeds = [int(s) for s in config.seeds]
  n_stages = 2 + sum(_n_stages(config, s) for s in seeds)
  count = [0]

  def stage(msg):
    count[0] += 1
    banner(f'[{count[0]}/{n_stages}] {msg}  ({time.perf_counter() - t0:.0f} s elapsed)')

  stage('prepare the data')
  t = time.perf_counter()
  info = tasks.dataset_info(config.source)
  say(f'dataset {config.source.data.dataset}: '
       + (f'vocab {info.vocab_size}, splits {dict(info.num_examples)}' if info is not None
          else 'synthetic') + f' [{time.perf_counter() - t:.1f} s]')
  per_seed = {}
  for seed in seeds:
    per_seed[seed] = run_seed(config, os.path.join(workdir, f'seed_{seed}')
                              if config.get('seed_dirs', len(seeds) > 1) else workdir, seed, stage)
  stage('write the report')
  any_seed = per_seed[seeds[0]]
  results = report.summarize(config, per_seed, any_seed['src_cfg'], any_seed['dst_cfg'],
                             wall_s=time.perf_counter() - t0, cpu_s=cpu_seconds() - cpu0)
  report.write_report(workdir, results)
  say(report.console_summary(results, workdir))
  return results


def load_results(workdir: str) -> dict[str, Any]:
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


__all__ = ['CloneCheckError', 'RunRecord', 'banner', 'clone_factors', 'load_results',
           'random_config', 'run', 'run_seed', 'train_clones', 'train_source',
           'validation_inputs']


def main(config: Any, workdir: str, command: str) -> None:
  """The absl entry points' body (experiments/demo.py, clone_experiment.py).

  Records `command` (plus this process's flags) in the report; a clone that does
  not preserve the logits exits with status 1 and the reason.
  """
  with config.unlocked():
    config.command = ' '.join([command] + sys.argv[1:])
  try:
    run(config, workdir)
  except CloneCheckError as e:
    sys.exit(f'FAILED: {e}')
