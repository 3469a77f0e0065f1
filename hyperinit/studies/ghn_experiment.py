"""The comparison experiment: LoGAH vs GHN-3 vs random init on held-out wider/deeper targets.

    from configs import ghn
    summary = run(ghn.get_config('experiment'), workdir)

For every pool of `config.pools`, decoder of `config.decoders` and seed of
`config.seeds`, a GHN is meta-trained (`train.train_ghn` in
`<workdir>/<pool>/<decoder>_s<seed>`; resumed, or skipped when done).  Then for
every held-out target of the pool and every seed, the target is fine-tuned from
the model's own random init (seeded) and from each GHN of that seed, with the
same optimizer, batches and eval batches.  Everything is resumable: finished
GHNs and fine-tuning runs are found on disk and skipped.

Writes (atomically) to the workdir: `finetune.jsonl` (one row per pool, target,
init, seed and eval step), `results.md` (tables: mean ± std over seeds), one PNG
per pool and target (`studies.plots`), and `timing.json` (wall seconds per phase).
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Any

import numpy as np
from absl import logging

from hyperinit import _io
from hyperinit.logah import saving, tasks
from hyperinit.train import ghn as train
from hyperinit.studies import ghn_finetune, plots
from hyperinit.train import metrics as metrics_lib


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


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the experiment; returns {'rows', 'meta', 'timing', 'table'}."""
  os.makedirs(workdir, exist_ok=True)
  seeds, decoders = [int(s) for s in config.seeds], list(config.decoders)
  rows_path = os.path.join(workdir, 'finetune.jsonl')
  rows = _load_rows(rows_path)
  timing_path = os.path.join(workdir, 'timing.json')
  timing = json.load(open(timing_path)) if os.path.exists(timing_path) else {}
  meta_rows: dict[str, list[dict[str, Any]]] = {}

  def save_timing():
    _io.atomic_write(timing_path, json.dumps(timing, indent=1, sort_keys=True))

  for pool_name, pool_cfg in config.pools.items():
    ghns: dict[tuple[str, int], tuple[Any, dict]] = {}
    for decoder in decoders:
      for seed in seeds:
        run_dir = os.path.join(workdir, pool_name, f'{decoder}_s{seed}')
        key = f'meta/{pool_name}/{decoder}_s{seed}'
        done_dir = os.path.join(run_dir, 'ghn')
        if os.path.isdir(done_dir):   # written atomically: whole or absent
          ghns[(decoder, seed)] = saving.load_ghn(done_dir)
        else:
          t0 = time.perf_counter()
          result = train.train_ghn(run_config(pool_cfg, decoder, seed), run_dir)
          if not result['done']:
            raise RuntimeError(f'GHN training in {run_dir} stopped at step {result["step"]} '
                               '(preempted); rerun to resume')
          timing[key] = time.perf_counter() - t0
          save_timing()
          ghns[(decoder, seed)] = (result['ghn_config'], result['params'])
        meta_rows[f'{pool_name}/{decoder}_s{seed}'] = metrics_lib.read_jsonl(run_dir)
    for target_name, target in tasks.targets(pool_cfg).items():
      finetuner = None
      for seed in seeds:
        inits = ['random'] + decoders
        todo = [i for i in inits if not any(
            r['pool'] == pool_name and r['target'] == target_name and r['init'] == i
            and r['seed'] == seed for r in rows)]
        if not todo:
          continue
        finetuner = finetuner or ghn_finetune.Finetuner(pool_cfg.finetune, target)
        params = ghn_finetune.init_params(target, seed, {d: ghns[(d, seed)] for d in decoders
                                                     if d in todo})
        for init in todo:
          t0 = time.perf_counter()
          curve = finetuner.run(params[init], seed)
          timing[f'finetune/{pool_name}/{target_name}/{init}_s{seed}'] = time.perf_counter() - t0
          rows += [{'pool': pool_name, 'target': target_name, 'init': init, 'seed': seed, **r}
                   for r in curve]
          _io.atomic_write(rows_path, ''.join(json.dumps(r) + '\n' for r in rows))
          save_timing()
  table = report(config, rows, meta_rows, timing)
  _io.atomic_write(os.path.join(workdir, 'results.md'), table)
  if config.get('plots', True):
    plot(config, rows, meta_rows, workdir)
  return {'rows': rows, 'meta': meta_rows, 'timing': timing, 'table': table}


def _stats(values: list[float]) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, tuple[float, float, int]]]:
  """{(pool, target, init, step): {'loss': (mean, std, n), 'accuracy': (...)}} over seeds
  ('accuracy' for classification only)."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r['pool'], r['target'], r['init'], r['step'])].append(r)
  out = {}
  for k, rs in groups.items():
    out[k] = {m: (*_stats([r[m] for r in rs]), len(rs)) for m in ('loss', 'accuracy')
              if all(m in r for r in rs)}
  return out


def report(config: Any, rows: list[dict[str, Any]], meta_rows: dict[str, list[dict[str, Any]]],
           timing: dict[str, float]) -> str:
  """Markdown: fine-tuning table (eval loss and accuracy, mean ± std over seeds) + meta-training."""
  s = summarize(rows)
  seeds = [int(x) for x in config.seeds]
  lines = [f'Seeds {seeds}; mean ± std over seeds of the eval loss in nats (ViTs: eval accuracy '
           'in brackets).', '']
  for pool_name, pool_cfg in config.pools.items():
    ft = pool_cfg.finetune
    cols = sorted({0, int(ft.num_train_steps), *(int(x) for x in ft.eval_at)})
    for target_name in tasks.targets(pool_cfg):
      lines += [f'**{pool_name}** pool `{pool_cfg.pool.name}` on `{pool_cfg.data.dataset}` '
                f'-> held-out target `{target_name}`', '',
                '| init | ' + ' | '.join(f'step {c}' for c in cols) + ' |',
                '| --- |' + ' --- |' * len(cols)]
      for init in ['random'] + list(config.decoders):
        cells = []
        for c in cols:
          v = s.get((pool_name, target_name, init, c))
          if v is None:
            cells.append('—')
            continue
          lm, ls, _ = v['loss']
          acc = f" ({100 * v['accuracy'][0]:.1f}%)" if 'accuracy' in v else ''
          cells.append(f'{lm:.3f} ± {ls:.3f}{acc}')
        lines.append(f'| {init} | ' + ' | '.join(cells) + ' |')
      lines.append('')
  lines += ['Meta-training (eval of the exported GHN on held-out data; mean ± std over seeds):', '',
            '| pool | decoder | pool archs: loss at step 0 | at the end | held-out target: loss '
            'at step 0 | at the end | meta-train wall (s) |', '| --- | --- | --- | --- | --- | --- | --- |']
  for pool_name, pool_cfg in config.pools.items():
    names = list(tasks.targets(pool_cfg))
    for decoder in config.decoders:
      ev = [[r for r in meta_rows.get(f'{pool_name}/{decoder}_s{sd}', []) if r['split'] == 'eval']
            for sd in seeds]
      ev = [e for e in ev if e]
      if not ev:
        continue

      def cell(key, idx):
        vals = [e[idx][key] for e in ev if key in e[idx]]
        if not vals:
          return '—'
        m, sd = _stats(vals)
        return f'{m:.3f} ± {sd:.3f}'

      wall = [timing.get(f'meta/{pool_name}/{decoder}_s{sd}') for sd in seeds]
      wall = [w for w in wall if w is not None]
      tkey = f'{names[0]}/loss' if names else ''
      lines.append(f'| {pool_name} | {decoder} | {cell("pool_loss", 0)} | {cell("pool_loss", -1)} '
                   f'| {cell(tkey, 0)} | {cell(tkey, -1)} | '
                   f'{" / ".join(f"{w:.0f}" for w in wall) or "—"} |')
  ft_wall = sum(v for k, v in timing.items() if k.startswith('finetune/'))
  meta_wall = sum(v for k, v in timing.items() if k.startswith('meta/'))
  lines += ['', f'Wall time recorded: meta-training {meta_wall:.0f} s, fine-tuning {ft_wall:.0f} s.',
            '']
  return '\n'.join(lines)


def plot(config: Any, rows: list[dict[str, Any]], meta_rows: dict[str, list[dict[str, Any]]],
         workdir: str) -> list[str]:
  """One PNG per pool and target: fine-tuning loss / accuracy vs step, and meta-training loss."""
  plt = plots.pyplot()
  s = summarize(rows)
  paths = []
  colors = {'random': 'tab:gray', 'logah': 'tab:blue', 'ghn3': 'tab:orange'}
  for pool_name, pool_cfg in config.pools.items():
    for target_name in tasks.targets(pool_cfg):
      keys = [k for k in s if k[:2] == (pool_name, target_name)]
      metrics = [m for m in ('loss', 'accuracy') if keys and all(m in s[k] for k in keys)]
      fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5 * (len(metrics) + 1), 4))
      for init in ['random'] + list(config.decoders):
        steps = sorted(k[3] for k in keys if k[2] == init)
        if not steps:
          continue
        for ax, metric in zip(axes[:-1], metrics):
          m = np.array([s[(pool_name, target_name, init, st)][metric][0] for st in steps])
          sd = np.array([s[(pool_name, target_name, init, st)][metric][1] for st in steps])
          ax.plot(steps, m, label=init, color=colors.get(init))
          ax.fill_between(steps, m - sd, m + sd, alpha=0.2, color=colors.get(init))
          ax.set_xlabel('fine-tuning step')
          ax.set_ylabel(f'eval {metric}')
          ax.set_title(f'{pool_name}: {target_name}, fine-tuning')
      for decoder in config.decoders:
        curves = [[(r['step'], r['task_loss']) for r in meta_rows.get(f'{pool_name}/{decoder}_s{sd}', [])
                   if r['split'] == 'train'] for sd in config.seeds]
        curves = [c for c in curves if c]
        if curves:
          n = min(len(c) for c in curves)
          steps = [st for st, _ in curves[0][:n]]
          m = np.mean([[v for _, v in c[:n]] for c in curves], axis=0)
          axes[-1].plot(steps, m, label=decoder, color=colors.get(decoder))
      axes[-1].set_xlabel('meta-training step')
      axes[-1].set_ylabel('train task loss (mean over pool, seeds)')
      axes[-1].set_title(f'meta-training on {pool_cfg.pool.name}')
      for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
      path = plots.save(fig, os.path.join(workdir, f'{pool_name}_{target_name}.png'), dpi=90)
      paths.append(path)
      logging.info('wrote %s', path)
  return paths
