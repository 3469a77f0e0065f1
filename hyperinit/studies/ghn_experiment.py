"""The comparison experiment: LoGAH vs GHN-3 vs random init on held-out wider/deeper targets.

    from configs import ghn
    summary = run(ghn.get_config('experiment'), workdir)     # also workdir/logah_experiment.json

For every task (pool) of `config.pools` and decoder of `config.decoders`, one
GHN is meta-trained (`train.train_ghn` in `<workdir>/<task>/<decoder>_s<ghn_seed>`;
resumed, or loaded when done).  Then every held-out target of the task is
fine-tuned, for every seed of `config.seeds`, with the same trainer, batches
and eval batches:
  - from the model's own random init at each LR of `config.random_lrs`;
  - from each GHN's prediction (+ `config.noise[decoder]` x each leaf's init std
    of Gaussian noise) at random init's best LR (lowest mean eval loss at the
    last step) times each multiplier of `config.ghn_lr_mults`.
  - for each decoder of `config.clone_decoders`, also as init '<decoder>-clone': its
    prediction of the target at 1/`config.clone_factor` of the width, HyperCloned
    to the target (`ghn_finetune.cloned_prediction`; symmetry-breaking noise at
    `config.clone_snr_db`, seeded by the seed), with the same LRs and noise;
  - for each decoder of `config.io_decoders`, also as init '<decoder>-io': its
    prediction outside the blocks, the blocks at the random init of the same seed
    (`logah.scope`, scope 'io'), with the same LRs and noise.
Finished GHNs and fine-tuning runs are found on disk and skipped.

Writes (atomically) to the workdir: `runs.jsonl` (one row per fine-tuning run:
its key, logged steps, eval loss / accuracy and the start's spectrum),
`logah_experiment.json` (`summarize`: what docs/results/logah_experiment.json
holds), `results.md` (`ghn_report.table`), PNGs (`ghn_report.plot`) and
`timing.json` (wall seconds per phase).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

from hyperinit import _io, models
from hyperinit.logah import saving, spectrum, tasks
from hyperinit.studies import ghn_finetune, ghn_report
from hyperinit.train import ghn as train
from hyperinit.train import metrics as metrics_lib

SUMMARY = 'logah_experiment.json'


def run_config(pool_cfg: Any, decoder: str, seed: int) -> Any:
  """A pool's config for one GHN run (a copy)."""
  c = pool_cfg.copy_and_resolve_references()
  c.ghn.decoder, c.seed = decoder, int(seed)
  return c


def _load_rows(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _spectrum(params: Any, target: Any, min_dim: int) -> dict[str, Any]:
  st = spectrum.spectrum_stats(params, models.param_specs(target), min_dim)
  return {k: st[k] for k in ('top1_share', 'effective_rank', 'num_leaves', 'min_dim')}


def _curve(rows: list[dict[str, float]]) -> dict[str, list]:
  out = {'steps': [int(r['step']) for r in rows], 'loss': [float(r['loss']) for r in rows]}
  if all('accuracy' in r for r in rows):
    out['accuracy'] = [float(r['accuracy']) for r in rows]
  return out


def train_ghns(config: Any, task: str, pool_cfg: Any, workdir: str, timing: dict[str, float],
               save_timing) -> tuple[dict[str, tuple[Any, dict]], dict[str, dict[str, Any]]]:
  """({decoder: (ghn config, params)}, {decoder: meta-training record}) of one task."""
  seed = int(config.ghn_seed)
  ghns, records = {}, {}
  for decoder in config.decoders:
    run_dir = os.path.join(workdir, task, f'{decoder}_s{seed}')
    key = f'meta/{task}/{decoder}'
    done_dir = os.path.join(run_dir, 'ghn')
    if os.path.isdir(done_dir):   # written atomically: whole or absent
      ghns[decoder] = saving.load_ghn(done_dir)
    else:
      logging.info('meta-training %s GHN for %s in %s', decoder, task, run_dir)
      t0 = time.perf_counter()
      # its per-group programs live on train_ghn's own jitted steps: freed when it returns
      result = train.train_ghn(run_config(pool_cfg, decoder, seed), run_dir)
      if not result['done']:
        raise RuntimeError(f'GHN training in {run_dir} stopped at step {result["step"]} '
                           '(preempted); rerun to resume')
      timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0
      save_timing()
      ghns[decoder] = (result['ghn_config'], result['params'])
    rows = metrics_lib.read_jsonl(run_dir)
    evals = [r for r in rows if r.get('split') == 'eval']
    records[decoder] = {
        'steps': int(pool_cfg.num_steps), 'wall_s': timing.get(key),
        'first_eval': evals[0] if evals else None, 'last_eval': evals[-1] if evals else None,
        'curve': [[int(r['step']), float(r['task_loss'])] for r in rows
                  if r.get('split') == 'train' and 'task_loss' in r]}
  return ghns, records


class Arm(NamedTuple):
  """A GHN start: `init` is its name in the runs; `scope` as in `ghn_finetune.start_params`;
  clone_factor > 0: the decoder predicts the target at 1/clone_factor of its width and the
  prediction is HyperCloned to the target (`ghn_finetune.cloned_prediction`)."""
  init: str
  decoder: str
  scope: str = 'all'
  clone_factor: int = 0


def ghn_arms(config: Any) -> list[Arm]:
  """Every decoder's full prediction ('logah'), then '<decoder>-clone' for each of
  `config.clone_decoders` (factor `config.clone_factor`), then '<decoder>-io' (scope 'io') for
  each of `config.io_decoders`; both lists must name decoders of `config.decoders`."""
  extra = {}
  for field in ('clone_decoders', 'io_decoders'):
    extra[field] = tuple(config.get(field, ()) or ())
    unknown = sorted(set(extra[field]) - set(config.decoders))
    if unknown:
      raise ValueError(f'config.{field} names {unknown}, not among config.decoders '
                       f'{list(config.decoders)}')
  factor = int(config.get('clone_factor', 2))
  if extra['clone_decoders'] and factor < 2:
    raise ValueError(f'config.clone_factor must be an integer >= 2, got {factor}')
  return ([Arm(d, d) for d in config.decoders]
          + [Arm(f'{d}-clone', d, clone_factor=factor) for d in extra['clone_decoders']]
          + [Arm(f'{d}-io', d, 'io') for d in extra['io_decoders']])


def best_lr(runs: list[dict[str, Any]], task: str, target: str, lrs: list[float]) -> float:
  """The random-init LR with the lowest mean (over seeds) eval loss at the last logged step."""
  def final(lr):
    v = [r['loss'][-1] for r in runs if (r['task'], r['target'], r['init'], r['lr'])
         == (task, target, 'random', lr)]
    return float(np.mean(v)) if v else float('inf')
  return min(lrs, key=final)


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the experiment; returns the summary (also written as SUMMARY)."""
  os.makedirs(workdir, exist_ok=True)
  seeds = [int(s) for s in config.seeds]
  lrs = [float(x) for x in config.random_lrs]
  runs_path = os.path.join(workdir, 'runs.jsonl')
  runs = _load_rows(runs_path)
  timing_path = os.path.join(workdir, 'timing.json')
  timing = json.load(open(timing_path)) if os.path.exists(timing_path) else {}
  save_timing = lambda: _io.atomic_write(timing_path, json.dumps(timing, indent=1, sort_keys=True))
  done = {(r['task'], r['target'], r['init'], r['lr'], r['seed']) for r in runs}
  meta_records, spectra, best, names = {}, {}, {}, {}
  arms = ghn_arms(config)          # checks the arm settings before any GHN is meta-trained
  snr = float(config.get('clone_snr_db', 10.0))

  selected = [t.strip() for t in str(config.get('tasks') or ','.join(config.pools)).split(',')
              if t.strip()]
  unknown = sorted(set(selected) - set(config.pools))
  if unknown:
    raise ValueError(f'config.tasks names {unknown}, not among the pools {sorted(config.pools)}')
  for task, pool_cfg in config.pools.items():
    if task not in selected:
      continue
    ghns, meta_records[task] = train_ghns(config, task, pool_cfg, workdir, timing, save_timing)
    targets = tasks.targets(pool_cfg)
    names[task], spectra[task], best[task] = list(targets), {}, {}
    min_dim = 2 * min(cfg.rank for cfg, _ in ghns.values()) if ghns else 1
    for tname, target in targets.items():
      predicted = ghn_finetune.predict_inits(target, ghns)
      cloned = lambda arm, seed: ghn_finetune.cloned_prediction(*ghns[arm.decoder], target,
                                                                arm.clone_factor, seed, snr)
      spectra[task][tname] = {'random': _spectrum(models.init_params(target, jax.random.key(0)), target,
                                                  min_dim)}
      spectra[task][tname].update({d: _spectrum(p, target, min_dim) for d, p in predicted.items()})
      spectra[task][tname].update({a.init: _spectrum(cloned(a, 0), target, min_dim)
                                   for a in arms if a.clone_factor})
      finetuners: dict[float, ghn_finetune.Finetuner] = {}

      def finetune(init, lr, mult, noise, seed, arm=None):
        key = (task, tname, init, lr, seed)
        if key in done:
          return
        ft = finetuners.get(lr) or finetuners.setdefault(
            lr, ghn_finetune.Finetuner(pool_cfg.finetune, target, lr=lr))
        scope = arm.scope if arm else 'all'
        pred = None if arm is None else (cloned(arm, seed) if arm.clone_factor
                                         else predicted[arm.decoder])
        start = ghn_finetune.start_params(target, seed, pred, noise, scope)
        t0 = time.perf_counter()
        curve = ft.run(start, seed)
        timing[f'finetune/{task}/{tname}/{init}_lr{lr:g}_s{seed}'] = time.perf_counter() - t0
        row = {'task': task, 'target': tname, 'init': init, 'lr': lr, 'lr_mult': mult,
               'noise': noise, 'scope': scope, 'seed': seed, **_curve(curve),
               **({'clone_factor': arm.clone_factor} if arm and arm.clone_factor else {}),
               'start_spectrum': _spectrum(start, target, min_dim)}
        runs.append(row)
        done.add(key)
        _io.atomic_write(runs_path, ''.join(json.dumps(r) + '\n' for r in runs))
        save_timing()

      for lr in lrs:
        for seed in seeds:
          finetune('random', lr, 1.0, 0.0, seed)
      best[task][tname] = best_lr(runs, task, tname, lrs)
      for arm in arms:
        noise = float(config.noise.get(arm.decoder, 0.0))
        for mult in (float(m) for m in config.ghn_lr_mults):
          for seed in seeds:
            finetune(arm.init, best[task][tname] * mult, mult, noise, seed, arm)
      finetuners.clear()           # (and with them their compiled programs)

  summary = summarize(config, runs, names, best, spectra, meta_records, timing)
  _io.atomic_write(os.path.join(workdir, SUMMARY), json.dumps(summary, indent=1))
  write_report(summary, workdir, plot=bool(config.get('plots', True)))
  return summary


def summarize(config: Any, runs, names, best, spectra, meta_records, timing) -> dict[str, Any]:
  """The summary JSON: {'seeds', 'table_steps', 'targets' {task: [names]}, 'runs' [{task,
  target, init, lr, lr_mult, noise, seed, steps, loss, [accuracy], start_spectrum}],
  'best_random_lr' {task: {target: lr}}, 'spectra' {task: {target: {init: {top1_share,
  effective_rank, num_leaves, min_dim}}}} (of the predictions, before noise; 'random': seed 0),
  'speedup' {task: {target: {arm: {seed: {ghn_loss, random_steps}}}}}, 'seedwise' {task:
  {target: {metric: {arm: {step: {wins, seeds, diffs}}}}}} (`ghn_report.seedwise`), 'meta_training'
  {task: {decoder: {steps, wall_s, first_eval, last_eval, curve}}}, 'timing', 'recipe'}."""
  first = next(iter(config.pools.values())).finetune
  arms = ghn_arms(config)
  summary = {
      'seeds': [int(s) for s in config.seeds], 'ghn_seed': int(config.ghn_seed),
      'table_steps': sorted({0, int(first.num_train_steps), *(int(s) for s in first.eval_at)}),
      'targets': names, 'runs': runs, 'best_random_lr': best, 'spectra': spectra,
      'meta_training': meta_records, 'timing': timing,
      'speedup_step': int(config.get('speedup_step', 100)),
      'recipe': {'random_lrs': [float(x) for x in config.random_lrs],
                 'ghn_lr_mults': [float(x) for x in config.ghn_lr_mults],
                 'noise': {k: float(v) for k, v in config.noise.items()},
                 'decoders': list(config.decoders),
                 'io_decoders': [a.decoder for a in arms if a.scope == 'io'],
                 'clone_decoders': [a.decoder for a in arms if a.clone_factor],
                 'clone_factor': int(config.get('clone_factor', 2)),
                 'clone_snr_db': float(config.get('clone_snr_db', 10.0)),
                 # Each task's GHN and meta-training settings (decoder: per run, as 'decoders').
                 'meta': {t: {'num_steps': int(c.num_steps), 'ghn': c.ghn.to_dict(),
                              'meta': c.meta.to_dict()} for t, c in config.pools.items()}}}
  summary['speedup'] = {t: {n: {a: {str(s): v for s, v in per.items()} for a, per in
                                ghn_report.speedup(summary, t, n, summary['speedup_step']).items()} for n in ns}
                        for t, ns in names.items()}
  # Seed by seed against random init at its best LR: {task: {target: {metric: {arm: {step:
  # {wins, seeds, diffs {seed: arm - random}}}}}}} (accuracy only for classification).
  summary['seedwise'] = {
      t: {n: {m: {a: {str(st): dict(v, diffs={str(k): d for k, d in v['diffs'].items()})
                       for st, v in per.items()}
                  for a, per in ghn_report.seedwise(summary, t, n, m).items()}
              for m in (('loss', 'accuracy') if ghn_report.has_accuracy(
                  r for r in runs if r['task'] == t) else ('loss',))}
          for n in ns} for t, ns in names.items()}
  return summary


def write_report(summary: dict[str, Any], outdir: str, plot: bool = True) -> list[str]:
  """results.md and (plot=True) the PNGs of a summary into outdir; returns the paths."""
  os.makedirs(outdir, exist_ok=True)
  path = os.path.join(outdir, 'results.md')
  _io.atomic_write(path, ghn_report.table(summary))
  return [path] + (ghn_report.plot(summary, outdir) if plot else [])
