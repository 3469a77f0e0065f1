"""A small, cheap search for muP's base hyper-parameters, on the base model only.

µTransfer's promise is "tune on the small model, use at every width": the
tuned quantities are the learning rate and the base HPs (`mup.BaseHParams`:
init, forward and per-class LR multipliers).  This search runs only at
(`base_width`, `base_depth`), where muP with default base HPs *is* SP:

1. LR grid at the default base HPs (`base_log2_lr` + `search.lr_offsets`): SP's
   best LR at the base width (`sp_log2_lr`);
2. coordinate descent, one field of `search.fields` at a time: multiply it by
   each of `search.factors` in turn and keep going in a direction while the
   objective improves by more than `search.min_gain` (at most
   `search.max_moves` moves per field);
3. the LR grid again around the best LR at the final base HPs.

The objective is the mean train-tail loss over `search.seeds` seeds (common
random numbers: every trial sees the same inits and batches).  With fewer
steps x tokens than the training split holds, the tail batches are text the
run has not trained on, so nothing is tuned on the validation split the
sweeps report.  The result is a JSON file that the width sweep reads
(`config.base_hps_file`):

    {'base_hps': {...}, 'log2_lr': muP base LR, 'sp_log2_lr': SP's at the base, 'loss', ...}

    result = run_search(config, workdir)   # workdir/search.json (trials, resumable),
                                           # metrics.jsonl and tb/ (a run per trial and seed)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import numpy as np

from hyperinit import mup
from hyperinit.studies import mup_sweep as sweep
from hyperinit.studies.mup_sweep_report import write_json


def effective(hps: mup.BaseHParams, base_cfg) -> dict[str, float]:
  """The base HPs as numbers: None forward multipliers replaced by what `mup_config` uses."""
  out = {k: v for k, v in hps.to_dict().items()}
  if out['output_mult'] is None:
    out['output_mult'] = float(base_cfg.logits_mult)
  if out['attn_mult'] is None:
    out['attn_mult'] = float(base_cfg.attn_mult) * (math.sqrt(base_cfg.d_head)
                                                     if base_cfg.attn_scale == 'sqrt' else 1.0)
  if out['embed_mult'] is None:
    out['embed_mult'] = float(base_cfg.embed_mult)
  return out


def _key(hps: mup.BaseHParams, log2_lr: float) -> str:
  return json.dumps([hps.to_dict(), float(log2_lr)], sort_keys=True)


def run_search(config: Any, workdir: str | None = None, log: Callable[[str], None] = print,
               ) -> dict[str, Any]:
  """Runs the search of the module doc; with a workdir, trials are kept in search.json and a
  rerun with the same config skips them.

  Returns:
    {'base_hps', 'log2_lr', 'sp_log2_lr', 'loss', 'sp_loss', 'objective', 'width', 'depth',
     'trials': [{'base_hps', 'log2_lr', 'loss', 'per_seed'}], 'seconds'}.
  """
  t_start = time.perf_counter()
  s = config.search
  w, d = int(config.base_width), int(config.base_depth)
  base_cfg = sweep.model_configs(config, w, d)[1]
  unknown = sorted(set(s.fields) - set(mup.BaseHParams().to_dict()))
  if unknown:
    raise ValueError(f'config.search.fields {unknown} are not muP base hyper-parameters')
  conf = json.loads(config.to_json_best_effort())
  path = os.path.join(workdir, 'search.json') if workdir else None
  trials: dict[str, dict[str, Any]] = {}
  if path and os.path.exists(path):
    with open(path) as f:
      prev = json.load(f)
    if sweep.run_fields(prev.get('config', {})) == sweep.run_fields(conf):
      trials = {_key(mup.BaseHParams.from_dict(t['base_hps']), t['log2_lr']): t
                for t in prev['trials']}
      log(f'resuming: {len(trials)} trials already in {path}')
    else:
      log(f'{path} was written with another config: starting over')
  rows = sweep.validation_rows(config)
  evals, n_eval = sweep.eval_batches(config, rows), int(rows[1].size)
  seeds = list(range(int(s.seeds)))
  batches = {k: sweep.train_batches(config, k) for k in seeds}
  progs: dict[str, sweep.Program] = {}

  def evaluate(hps: mup.BaseHParams, log2_lr: float) -> float:
    key = _key(hps, log2_lr)
    if key not in trials:
      hkey = json.dumps(hps.to_dict(), sort_keys=True)
      if hkey not in progs:
        progs.clear()
        progs[hkey] = sweep.build_program(config, 'mup', w, d, hps)
      recs = [sweep.run_one(progs[hkey], config, batches[k], evals, n_eval, 'mup', w, d, k,
                            log2_lr) for k in seeds]
      if workdir:
        for k, r in zip(seeds, recs):
          sweep.log_run(workdir, r, int(config.chunk), name=f'trial{len(trials) + 1:03d}_s{k}')
      per_seed = [math.inf if r.diverged else r.train_tail_loss for r in recs]
      trials[key] = {'base_hps': hps.to_dict(), 'log2_lr': float(log2_lr),
                     'loss': float(np.mean(per_seed)), 'per_seed': per_seed,
                     'val_loss': [r.val_loss for r in recs]}
      changed = {k: v for k, v in hps.to_dict().items() if v != getattr(mup.BaseHParams(), k)}
      log(f'trial {len(trials):3d}: log2_lr {log2_lr:+5.1f} {changed or "defaults"} -> '
          f'train-tail {trials[key]["loss"]:.4f}  ({(time.perf_counter() - t_start) / 60:.1f} '
          'min)')
      if path:
        write_json(path, {'config': conf, 'trials': list(trials.values())})
    return trials[key]['loss']

  def lr_stage(hps: mup.BaseHParams, centre: float) -> tuple[float, float]:
    losses = {centre + o: evaluate(hps, centre + o) for o in s.lr_offsets}
    best = min(losses, key=losses.get)
    return float(best), losses[best]

  # 1. SP at the base width (= muP with default base HPs there)
  default = mup.BaseHParams()
  sp_lr, sp_loss = lr_stage(default, float(config.base_log2_lr))
  hps, lr, best = default, sp_lr, sp_loss
  # 2. coordinate descent on the base HPs, at the current best LR
  for field in s.fields:
    start = effective(hps, base_cfg)[field]
    for factor in s.factors:
      moved = False
      for k in range(1, int(s.max_moves) + 1):
        cand = dataclasses.replace(hps, **{field: float(start * factor ** k)})
        loss = evaluate(cand, lr)
        if loss < best - float(s.min_gain):
          hps, best, moved = cand, loss, True
        else:
          break
      if moved:
        break                                      # the other direction cannot help as well
  # 3. the LR again, around the current best, at the final base HPs
  new_lr, new_loss = lr_stage(hps, lr)
  if new_loss < best - float(s.min_gain):
    lr, best = new_lr, new_loss
  result = {'base_hps': hps.to_dict(), 'log2_lr': lr, 'sp_log2_lr': sp_lr, 'loss': best,
            'sp_loss': sp_loss, 'objective': f'mean train-tail loss over {len(seeds)} seed(s)',
            'width': w, 'depth': d, 'steps': int(config.steps),
            'trials': list(trials.values()), 'seconds': time.perf_counter() - t_start}
  if workdir:
    write_json(os.path.join(workdir, 'base_hps.json'), result)
  if config.get('results_file'):
    out = copy.deepcopy(result)
    write_json(config.results_file, out)
  log(f'base HPs: {hps.to_dict()} at log2 LR {lr:g}: train-tail {best:.4f} (SP at the base: '
      f'{sp_loss:.4f} at log2 LR {sp_lr:g}); {len(trials)} trials in '
      f'{(time.perf_counter() - t_start) / 60:.1f} min')
  return result
