"""The GHN experiment's summary JSON -> statistics, markdown tables and plots.

    summary = json.load(open('docs/results/logah_experiment.json'))
    print(table(summary))                    # markdown: fine-tuning, spectra, speed-up, meta-training
    plot(summary, 'docs/results')            # one PNG per task and target

Everything here reads only the summary (see `ghn_experiment.summarize` for its
fields), so tables and plots can be regenerated from the JSON alone.  Runs are
keyed by (task, target, init, lr, seed); an "arm" is (init, lr) and its
statistics are over seeds.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

from hyperinit.studies import clone_report, plots

COLORS = {'random': 'tab:gray', 'logah': 'tab:blue', 'ghn3': 'tab:orange',
          'logah-io': 'tab:green', 'ghn3-io': 'tab:red', 'logah-clone': 'tab:purple',
          'ghn3-clone': 'tab:brown'}
# Arms whose speed-up over random init the report gives (LoGAH: full, cloned, 'io' scope).
SPEEDUP_INITS = ('logah', 'logah-clone', 'logah-io')


def arm_name(run: dict[str, Any]) -> str:
  """'random lr 1e-03', 'logah lr 2.5e-04 (x0.25)', 'ghn3 lr ... + noise 0.1'."""
  name = f"{run['init']} lr {run['lr']:.2g}"
  if run['init'] != 'random' and run.get('lr_mult', 1.0) != 1.0:
    name += f" (x{run['lr_mult']:g})"
  if run.get('noise'):
    name += f" + noise {run['noise']:g}"
  if run.get('scope', 'all') != 'all':
    name += ' [blocks random]'
  return name


def arms(summary: dict[str, Any], task: str, target: str) -> dict[str, list[dict[str, Any]]]:
  """{arm name: its runs (one per seed)} for one task and target, random arms first."""
  out: dict[str, list[dict[str, Any]]] = collections.OrderedDict()
  runs = [r for r in summary['runs'] if (r['task'], r['target']) == (task, target)]
  order = {'random': 0}
  for r in sorted(runs, key=lambda r: (order.get(r['init'], 1), r['init'], -r['lr'], r['seed'])):
    out.setdefault(arm_name(r), []).append(r)
  return out


def value_at(run: dict[str, Any], metric: str, step: int) -> float | None:
  if metric not in run or step not in run['steps']:
    return None
  return float(run[metric][run['steps'].index(step)])


def stats(runs: list[dict[str, Any]], metric: str, step: int) -> tuple[float, float, int] | None:
  """(mean, std (ddof 1; 0 for one seed), n) of `metric` at `step` over runs."""
  v = [x for x in (value_at(r, metric, step) for r in runs) if x is not None]
  if not v:
    return None
  return (*clone_report.mean_std(v), len(v))


def steps_to_reach(run: dict[str, Any], level: float) -> float | None:
  """First step at which the run's eval loss is <= level, linearly interpolated between
  logged steps; None if it never gets there."""
  steps, loss = run['steps'], run['loss']
  for i, (s, v) in enumerate(zip(steps, loss)):
    if v <= level:
      if i == 0:
        return float(s)
      s0, v0 = steps[i - 1], loss[i - 1]
      return float(s0 + (v0 - level) / (v0 - v) * (s - s0))
  return None


def random_by_seed(summary: dict[str, Any], task: str, target: str) -> dict[int, dict[str, Any]]:
  """{seed: run} of random init at its best LR: what GHN arms are compared with."""
  best = summary['best_random_lr'][task][target]
  return {r['seed']: r for r in summary['runs'] if (r['task'], r['target'], r['init']) ==
          (task, target, 'random') and r['lr'] == best}


def has_accuracy(runs) -> bool:
  """Whether any of `runs` (an iterable of run rows) logged an eval accuracy (ViTs)."""
  return any('accuracy' in r for r in runs)


def speedup(summary: dict[str, Any], task: str, target: str, ghn_step: int = 100,
            inits: tuple[str, ...] = SPEEDUP_INITS) -> dict[str, dict[int, dict[str, float | None]]]:
  """{GHN arm: {seed: {'ghn_loss', 'random_steps'}}}: steps random init at its best LR needs
  to reach the eval loss at `ghn_step` of each arm whose init is in `inits`, per seed."""
  rand = random_by_seed(summary, task, target)
  out: dict[str, dict[int, dict[str, float | None]]] = {}
  for name, runs in arms(summary, task, target).items():
    if runs[0]['init'] not in inits:
      continue
    per = {}
    for r in runs:
      level = value_at(r, 'loss', ghn_step)
      if level is None or r['seed'] not in rand:
        continue
      per[r['seed']] = {'ghn_loss': level, 'random_steps': steps_to_reach(rand[r['seed']], level)}
    out[name] = per
  return out


def seedwise(summary: dict[str, Any], task: str, target: str,
             metric: str = 'loss') -> dict[str, dict[int, dict[str, Any]]]:
  """{GHN arm: {step: {'wins', 'seeds', 'diffs'}}}: seed by seed, the arm against random init
  at its best LR with the same seed (same batches).  diffs = arm - random per seed; a win is a
  lower loss (metric 'loss') or a higher-or-equal accuracy (metric 'accuracy')."""
  rand = random_by_seed(summary, task, target)
  out: dict[str, dict[int, dict[str, Any]]] = {}
  for name, runs in arms(summary, task, target).items():
    if runs[0]['init'] == 'random':
      continue
    per: dict[int, dict[str, Any]] = {}
    for step in (int(c) for c in summary['table_steps']):
      diffs = {}
      for r in runs:
        a = value_at(r, metric, step)
        b = value_at(rand[r['seed']], metric, step) if r['seed'] in rand else None
        if a is not None and b is not None:
          diffs[int(r['seed'])] = a - b
      wins = sum(d < 0 if metric == 'loss' else d >= 0 for d in diffs.values())
      per[step] = {'wins': int(wins), 'seeds': len(diffs), 'diffs': diffs}
    out[name] = per
  return out


def _cell(st: tuple[float, float, int] | None, acc: tuple[float, float, int] | None) -> str:
  if st is None:
    return '—'
  text = f'{st[0]:.3f} ± {st[1]:.3f}'
  return text + (f' ({100 * acc[0]:.1f}%)' if acc is not None else '')


def table(summary: dict[str, Any]) -> str:
  """Markdown: per task and target, eval loss (accuracy) per arm and logged step; the
  predicted models' spectra; the speed-up; meta-training."""
  cols = [int(s) for s in summary['table_steps']]
  lines = [f"Seeds {summary['seeds']}; eval loss in nats, mean ± std over seeds (ViTs: eval "
           'accuracy in brackets). Random init at each LR; GHN starts at random init\'s best LR '
           '(by the final eval loss) and at a multiple of it.', '']
  for task, targets in summary['targets'].items():
    for target in targets:
      best = summary['best_random_lr'][task][target]
      lines += [f'**{task}** → held-out `{target}` (random init\'s best LR: {best:g})', '',
                '| init | ' + ' | '.join(f'step {c}' for c in cols) + ' |',
                '| --- |' + ' --- |' * len(cols)]
      for name, runs in arms(summary, task, target).items():
        cells = [_cell(stats(runs, 'loss', c), stats(runs, 'accuracy', c)) for c in cols]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
      lines.append('')
      groups = arms(summary, task, target)
      for metric in ['loss'] + (['accuracy'] if has_accuracy(r for rs in groups.values()
                                                              for r in rs) else []):
        per_arm = seedwise(summary, task, target, metric)
        what = 'lower eval loss' if metric == 'loss' else 'eval accuracy ≥'
        for name, per in per_arm.items():
          cells = ', '.join(f"step {c}: {v['wins']}/{v['seeds']}" for c, v in per.items())
          lines.append(f'Seeds on which {name} has {what} than random init (lr {best:g}, same '
                       f'seed): {cells}.')
      lines.append('')
      at = int(summary.get('speedup_step', 100))
      for name, per in speedup(summary, task, target, at).items():
        parts = [f"seed {s}: {v['random_steps']:.0f}" if v['random_steps'] is not None else
                 f'seed {s}: > {max(cols)}' for s, v in sorted(per.items())]
        lines.append(f'Steps random init (lr {best:g}) needs to reach {name}\'s step-{at} loss: '
                     + ', '.join(parts) + '.')
      lines.append('')
  lines += ['Spectra of the predicted kernels (matrices with both sides ≥ 2r; random init for '
            'comparison): mean top-1 energy share / mean effective rank.', '',
            '| task | target | init | top-1 share | effective rank | matrices |',
            '| --- | --- | --- | --- | --- | --- |']
  for task, per_target in summary['spectra'].items():
    for target, per_init in per_target.items():
      for init, st in per_init.items():
        lines.append(f"| {task} | {target} | {init} | {st['top1_share']:.3f} | "
                     f"{st['effective_rank']:.1f} | {st['num_leaves']} |")
  lines += ['', 'Meta-training (EMA GHN on the eval split: mean over the evaluated pool groups / '
            'first held-out target):', '',
            '| task | decoder | steps | pool loss start → end | held-out loss start → end | '
            'wall (s) |', '| --- | --- | --- | --- | --- | --- |']
  for task, per_dec in summary['meta_training'].items():
    for dec, m in per_dec.items():
      first, last = m.get('first_eval') or {}, m.get('last_eval') or {}
      key = f"{summary['targets'][task][0]}/loss"
      fmt = lambda d, k: f'{d[k]:.3f}' if k in d else '—'
      wall = f"{m['wall_s']:.0f}" if m.get('wall_s') is not None else '—'
      lines.append(f"| {task} | {dec} | {m.get('steps', '—')} | {fmt(first, 'pool_loss')} → "
                   f"{fmt(last, 'pool_loss')} | {fmt(first, key)} → {fmt(last, key)} | {wall} |")
  t = summary.get('timing', {})
  meta_s = sum(v for k, v in t.items() if k.startswith('meta/'))
  ft_s = sum(v for k, v in t.items() if k.startswith('finetune/'))
  lines += ['', f'Wall time recorded: meta-training {meta_s:.0f} s, fine-tuning {ft_s:.0f} s.', '']
  return '\n'.join(lines)


def plot(summary: dict[str, Any], outdir: str, prefix: str = 'logah_experiment') -> list[str]:
  """One PNG per task and target: eval loss (and accuracy) vs fine-tuning step per arm
  (mean ± std over seeds), and the meta-training loss of each decoder."""
  plt = plots.pyplot()
  paths = []
  for task, targets in summary['targets'].items():
    for target in targets:
      groups = arms(summary, task, target)
      metrics = ['loss'] + (['accuracy'] if has_accuracy(r for rs in groups.values()
                                                         for r in rs) else [])
      fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5.5 * (len(metrics) + 1), 4))
      for name, runs in groups.items():
        init, mult = runs[0]['init'], runs[0].get('lr_mult', 1.0)
        style = '-' if (init == 'random' and runs[0]['lr'] == summary['best_random_lr'][task][
            target]) or (init != 'random' and mult == 1.0) else '--'
        steps = runs[0]['steps']
        for ax, metric in zip(axes[:-1], metrics):
          st = [stats(runs, metric, s) for s in steps]
          m = np.array([x[0] for x in st])
          sd = np.array([x[1] for x in st])
          ax.plot(steps, m, style, label=name, color=COLORS.get(init))
          ax.fill_between(steps, m - sd, m + sd, alpha=0.15, color=COLORS.get(init))
          ax.set_xlabel('fine-tuning step')
          ax.set_ylabel(f'eval {metric}')
          ax.set_title(f'{task}: {target}')
      for dec, m in summary['meta_training'].get(task, {}).items():
        curve = np.asarray(m.get('curve') or [], np.float64).reshape(-1, 2)
        if len(curve):
          axes[-1].plot(curve[:, 0], curve[:, 1], label=dec, color=COLORS.get(dec))
      axes[-1].set_xlabel('meta-training step')
      axes[-1].set_ylabel('train task loss (pool)')
      axes[-1].set_title(f'{task}: meta-training')
      for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
      paths.append(plots.save(fig, os.path.join(outdir, f'{prefix}_{task}_{target}.png'), dpi=90))
  return paths
