"""µTransfer sweep results: best LR per size, loss at the base's best LR, tables, plot, files.

Works on the sweep's records as plain dicts (`mup_sweep.Record` as saved in
results.json; `size` is the record's width or depth, by the sweep's mode), so
a notebook can load docs/results/mup_width_sweep.json and call these.

    summary = summarize(records, 'width')   # per param and width: argmins, losses, spreads
    print(tables(summary, baselines))
    plot(records, 'width', 'sweep.png', baselines)
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from hyperinit import _io
from hyperinit.studies import plots

PARAMETRIZATIONS = ('sp', 'mup')
LABELS = {'sp': 'SP', 'mup': 'muP'}
write_json = _io.write_json


# --- analysis ------------------------------------------------------------------------------

def _rows(records, param, mode, size, seed=None):
  return [r for r in records if r['param'] == param and r[mode] == size
          and (seed is None or r['seed'] == seed)]


def curve(records: Sequence[dict], param: str, mode: str, size: int, seed: int | None = None,
          key: str = 'val_loss') -> dict[float, float]:
  """{log2_lr: loss} (seed mean when seed is None; inf where any seed diverged)."""
  out: dict[float, list[float]] = {}
  for r in _rows(records, param, mode, size, seed):
    out.setdefault(r['log2_lr'], []).append(math.inf if r['diverged'] else r[key])
  return {lr: float(np.mean(v)) for lr, v in sorted(out.items())}


def argmin(c: dict[float, float]) -> float | None:
  finite = {lr: v for lr, v in c.items() if math.isfinite(v)}
  return min(finite, key=finite.get) if finite else None


def at_lr(records: Sequence[dict], param: str, mode: str, size: int, lr: float | None,
          key: str = 'val_loss') -> dict[str, Any] | None:
  """Seed mean, seed spread (max - min) and per-seed values of `key` at one LR; None when
  the LR was not run or any seed diverged there."""
  rows = [r for r in _rows(records, param, mode, size) if r['log2_lr'] == lr]
  if lr is None or not rows or any(r['diverged'] for r in rows):
    return None
  v = [r[key] for r in sorted(rows, key=lambda r: r['seed'])]
  return {'mean': float(np.mean(v)), 'spread': float(max(v) - min(v)), 'per_seed': v}


def summarize(records: Sequence[dict], mode: str) -> dict[str, Any]:
  """Per parametrisation and size (width or depth, by `mode`).

  Returns:
    {param: {'base_size', 'base_argmin',
             'sizes': {size: {'argmin' (seed-mean best log2 LR), 'per_seed' {seed: argmin},
                              'edge' (argmin at the end of this size's grid), 'diverged' [lrs],
                              'shift' (argmin - base_argmin), 'best' (at_lr at the argmin),
                              'best_tail' (train-tail at the argmin),
                              'at_base_lr' (at_lr at base_argmin), 'at_base_lr_tail'}}}}
  """
  out: dict[str, Any] = {}
  for param in [p for p in PARAMETRIZATIONS if any(r['param'] == p for r in records)]:
    sizes = sorted({r[mode] for r in records if r['param'] == param})
    seeds = sorted({r['seed'] for r in records if r['param'] == param})
    base_lr = argmin(curve(records, param, mode, sizes[0]))
    per = {}
    for n in sizes:
      c = curve(records, param, mode, n)
      best = argmin(c)
      per[n] = {'argmin': best,
                'per_seed': {s: argmin(curve(records, param, mode, n, s)) for s in seeds},
                'edge': best is not None and len(c) > 1 and best in (min(c), max(c)),
                'diverged': [lr for lr, v in c.items() if not math.isfinite(v)],
                'shift': None if best is None or base_lr is None else best - base_lr,
                'best': at_lr(records, param, mode, n, best),
                'best_tail': at_lr(records, param, mode, n, best, 'train_tail_loss'),
                'at_base_lr': at_lr(records, param, mode, n, base_lr),
                'at_base_lr_tail': at_lr(records, param, mode, n, base_lr, 'train_tail_loss')}
    out[param] = {'base_size': sizes[0], 'base_argmin': base_lr, 'sizes': per}
  return out


# --- tables --------------------------------------------------------------------------------

def _fmt(v, spec='g'):
  return '—' if v is None else format(v, spec)


def _loss(x):
  return '—' if x is None else f'{x["mean"]:.4f} ± {x["spread"] / 2:.4f}'


def tables(summary: dict[str, Any], mode: str, baselines: dict[str, float] | None = None) -> str:
  """Markdown: (1) best log2 LR per size (seed mean; per seed), (2) validation and train-tail
  loss at the base size's best LR, (3) each parametrisation at its own best LR; ± is half
  the seed-to-seed range.  Baselines (bigram, unigram) in a closing line."""
  params = list(summary)
  sizes = sorted({n for s in summary.values() for n in s['sizes']})
  out = []
  head = f'| {mode} | ' + ' | '.join(f'{LABELS[p]} best log2 LR (per seed)' for p in params)
  out += [head + ' |', '|' + ' --- |' * (1 + len(params))]
  for n in sizes:
    cells = []
    for p in params:
      r = summary[p]['sizes'].get(n)
      cells.append('—' if r is None else
                   f'{_fmt(r["argmin"])} ({", ".join(_fmt(v) for v in r["per_seed"].values())})'
                   + (' (grid edge)' if r['edge'] else ''))
    out.append(f'| {n} | ' + ' | '.join(cells) + ' |')
  out.append('')
  lrs = ', '.join(f'{LABELS[p]} 2^{_fmt(summary[p]["base_argmin"])}' for p in params)
  out.append(f'Loss at the base {mode}\'s best LR ({lrs}), seed mean ± half range:')
  out.append('')
  out.append(f'| {mode} | ' + ' | '.join(f'{LABELS[p]} val | {LABELS[p]} train-tail'
                                         for p in params) + ' |')
  out.append('|' + ' --- |' * (1 + 2 * len(params)))
  for n in sizes:
    cells = []
    for p in params:
      r = summary[p]['sizes'].get(n) or {}
      cells += [_loss(r.get('at_base_lr')), _loss(r.get('at_base_lr_tail'))]
    out.append(f'| {n} | ' + ' | '.join(cells) + ' |')
  out.append('')
  out.append('Each parametrisation at its own best LR of that size:')
  out.append('')
  out.append(f'| {mode} | ' + ' | '.join(f'{LABELS[p]} log2 LR | {LABELS[p]} val | '
                                         f'{LABELS[p]} train-tail' for p in params) + ' |')
  out.append('|' + ' --- |' * (1 + 3 * len(params)))
  for n in sizes:
    cells = []
    for p in params:
      r = summary[p]['sizes'].get(n) or {}
      cells += [_fmt(r.get('argmin')), _loss(r.get('best')), _loss(r.get('best_tail'))]
    out.append(f'| {n} | ' + ' | '.join(cells) + ' |')
  if baselines:
    out.append('')
    out.append(f'Count-based baselines on the same validation tokens: bigram '
               f'{baselines["bigram_seen"]:.4f} / unigram {baselines["unigram_seen"]:.4f} '
               f'(fitted on the {baselines["seen_tokens"]} training tokens a run sees), bigram '
               f'{baselines["bigram_split"]:.4f} / unigram {baselines["unigram_split"]:.4f} '
               f'(the whole training split, {baselines["split_tokens"]} tokens).')
  return '\n'.join(out)


def grid_table(records: Sequence[dict], mode: str) -> str:
  """Seed-mean validation loss: a row per (param, size), a column per log2 LR; the row's
  argmin in bold, 'div' where any seed diverged, blank where not run."""
  lrs = sorted({r['log2_lr'] for r in records})
  out = ['| | ' + ' | '.join(f'{lr:g}' for lr in lrs) + ' |', '|' + ' --- |' * (1 + len(lrs))]
  for p in [q for q in PARAMETRIZATIONS if any(r['param'] == q for r in records)]:
    for n in sorted({r[mode] for r in records if r['param'] == p}):
      c = curve(records, p, mode, n)
      best = argmin(c)
      cells = ['' if lr not in c else 'div' if not math.isfinite(c[lr]) else
               f'**{c[lr]:.3f}**' if lr == best else f'{c[lr]:.3f}' for lr in lrs]
      out.append(f'| {LABELS[p]} {n} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(out)


# --- plot ----------------------------------------------------------------------------------

def plot(records: Sequence[dict], mode: str, path: str,
         baselines: dict[str, float] | None = None, labels: dict[str, str] | None = None,
         title: str = '') -> None:
  """PNG: per parametrisation, validation loss vs log2 LR per size (seed mean, error bars =
  seed range, x = diverged, * = best); a last panel with the loss at the base's best LR vs
  size.  Bigram and unigram losses as horizontal lines."""
  labels = {**LABELS, **(labels or {})}
  plt = plots.pyplot()
  params = [p for p in PARAMETRIZATIONS if any(r['param'] == p for r in records)]
  sizes = sorted({r[mode] for r in records})
  finite = [r['val_loss'] for r in records if not r['diverged']]
  lo = min(finite + ([baselines['bigram_seen']] if baselines else [])) if finite else 0.0
  hi = lo + 1.0
  fig, axes = plt.subplots(1, len(params) + 1, figsize=(4.8 * (len(params) + 1), 4.2),
                           squeeze=False)
  cmap = plt.get_cmap('viridis', max(len(sizes), 2))
  summary = summarize(records, mode)

  def lines(ax):
    if baselines:
      ax.axhline(baselines['bigram_seen'], color='crimson', ls='--', lw=1, label='bigram')
      if baselines['unigram_seen'] < hi:
        ax.axhline(baselines['unigram_seen'], color='gray', ls=':', lw=1, label='unigram')
  for ax, p in zip(axes[0], params):
    for i, n in enumerate(sizes):
      rows = _rows(records, p, mode, n)
      lrs = sorted({r['log2_lr'] for r in rows})
      ok = [lr for lr in lrs if all(not r['diverged'] for r in rows if r['log2_lr'] == lr)]
      vals = {lr: [r['val_loss'] for r in rows if r['log2_lr'] == lr] for lr in ok}
      if ok:
        mean = [np.mean(vals[lr]) for lr in ok]
        err = [[m - min(vals[lr]) for lr, m in zip(ok, mean)],
               [max(vals[lr]) - m for lr, m in zip(ok, mean)]]
        ax.errorbar(ok, mean, yerr=err, fmt='-o', color=cmap(i), ms=4, capsize=3,
                    label=f'{mode} {n}')
      for lr in lrs:
        if lr not in ok:
          ax.plot(lr, hi - 0.03, 'x', color=cmap(i), ms=7)
      best = summary[p]['sizes'].get(n, {}).get('best')
      if best:
        ax.plot(summary[p]['sizes'][n]['argmin'], best['mean'], '*', color=cmap(i), ms=13,
                mec='k', mew=0.6)
    lines(ax)
    ax.set_title(labels[p])
    ax.set_xlabel('log2 learning rate')
    ax.set_ylim(lo - 0.05, hi)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('validation loss (nats/token)')
  axes[0][0].legend(fontsize=7)
  ax = axes[0][-1]
  for p, c in zip(params, ('tab:blue', 'tab:orange')):
    for key, mk, name in (('at_base_lr', 'o-', "base's best LR"), ('best', 's--', 'own best LR')):
      pts = [(n, r[key]) for n, r in sorted(summary[p]['sizes'].items()) if r[key]]
      if pts:
        ax.errorbar([n for n, _ in pts], [x['mean'] for _, x in pts],
                    yerr=[x['spread'] / 2 for _, x in pts], fmt=mk, color=c, capsize=3, ms=4,
                    label=f'{labels[p]}, {name}')
  lines(ax)
  ax.set_xscale('log', base=2)
  ax.set_xticks(sizes)
  ax.set_xticklabels([str(n) for n in sizes])
  ax.set_xlabel(mode)
  ax.set_title('validation loss vs ' + mode + ' (± half seed range)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.suptitle(title or f'µTransfer across {mode}: loss vs learning rate (x: diverged; * best)',
               fontsize=10)
  plots.save(fig, path, dpi=110)


# --- files ---------------------------------------------------------------------------------

def write_outputs(workdir: str, results: dict[str, Any], labels: dict[str, str] | None = None
                  ) -> dict[str, Any]:
  """results.json (with the summary), summary.json, table.md and sweep.png in `workdir`;
  returns the summary."""
  mode = results['mode']
  summary = summarize(results['records'], mode)
  js = json.loads(json.dumps(summary))          # int keys -> str, as JSON has them
  write_json(os.path.join(workdir, 'results.json'), {**results, 'summary': js})
  write_json(os.path.join(workdir, 'summary.json'), js)
  text = (tables(summary, mode, results.get('baselines'))
          + '\n\nSeed-mean validation loss (nats/token) per log2 learning rate:\n\n'
          + grid_table(results['records'], mode))
  _io.atomic_write(os.path.join(workdir, 'table.md'), text + '\n')
  plot(results['records'], mode, os.path.join(workdir, 'sweep.png'), results.get('baselines'),
       labels)
  return summary
