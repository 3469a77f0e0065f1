"""µTransfer LR sweep results: argmin per width, markdown table, plot, files.

Works on the sweep's points as plain dicts (`hyperinit.mup.sweep.Point` as
saved in results.json), so a notebook can load results.json and call these.

    summary = summarize(points)     # best log2 LR per width (seed mean and per seed), shifts
    print(table(summary))
    plot(points, 'sweep.png')
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


# --- analysis ------------------------------------------------------------------------------

def _curve(points: Sequence[dict], param: str, width: int, seed: int | None = None):
  """{log2_lr: loss} (seed mean when seed is None; inf where any seed diverged)."""
  rows = [p for p in points if p['param'] == param and p['width'] == width
          and (seed is None or p['seed'] == seed)]
  out: dict[float, list[float]] = {}
  for p in rows:
    out.setdefault(p['log2_lr'], []).append(math.inf if p['val_loss'] is None else p['val_loss'])
  return {lr: float(np.mean(v)) for lr, v in sorted(out.items())}


def _argmin(curve: dict[float, float]) -> float | None:
  finite = {lr: v for lr, v in curve.items() if math.isfinite(v)}
  return min(finite, key=finite.get) if finite else None


def _seed_spread(points: Sequence[dict], param: str, width: int) -> float | None:
  """Mean over learning rates of the max - min held-out loss across seeds (finite runs only)."""
  by_lr: dict[float, list[float]] = {}
  for p in points:
    if p['param'] == param and p['width'] == width and p['val_loss'] is not None:
      by_lr.setdefault(p['log2_lr'], []).append(p['val_loss'])
  spreads = [max(v) - min(v) for v in by_lr.values() if len(v) > 1]
  return float(np.mean(spreads)) if spreads else None


def summarize(points: Sequence[dict]) -> dict[str, Any]:
  """Best log2 LR per parametrisation and width (seed mean and per seed) and its shift.

  A learning rate where any seed diverged has no seed mean (it cannot be the
  argmin); an argmin at either end of a width's grid is flagged as `edge` (the
  true optimum may lie outside, so a shift involving it is only a bound).

  Returns:
    {param: {'widths': {width: {'argmin', 'loss', 'per_seed', 'diverged', 'edge',
                                'seed_spread'}},
             'shift': argmin(widest) - argmin(narrowest) in log2 units (None if undefined),
             'max_shift': largest |argmin(w) - argmin(narrowest)| over widths,
             'per_seed_shift': {seed: shift}}}
  """
  out: dict[str, Any] = {}
  for param in sorted({p['param'] for p in points}, key=PARAMETRIZATIONS.index):
    widths = sorted({p['width'] for p in points if p['param'] == param})
    seeds = sorted({p['seed'] for p in points if p['param'] == param})
    per_w = {}
    for w in widths:
      curve = _curve(points, param, w)
      best = _argmin(curve)
      per_w[w] = {'argmin': best, 'loss': None if best is None else curve[best],
                  'per_seed': {s: _argmin(_curve(points, param, w, s)) for s in seeds},
                  'diverged': sorted(lr for lr, v in curve.items() if not math.isfinite(v)),
                  'edge': best is not None and best in (min(curve), max(curve)),
                  'seed_spread': _seed_spread(points, param, w)}
    first, last = per_w[widths[0]], per_w[widths[-1]]

    def shift(a, b):
      return None if a is None or b is None else b - a
    shifts = [shift(first['argmin'], per_w[w]['argmin']) for w in widths]
    out[param] = {
        'widths': per_w, 'shift': shift(first['argmin'], last['argmin']),
        'max_shift': None if None in shifts else max(abs(s) for s in shifts),
        'per_seed_shift': {s: shift(first['per_seed'][s], last['per_seed'][s]) for s in seeds}}
  return out


def table(summary: dict[str, Any]) -> str:
  """Markdown table: best log2 LR per width (seed mean; per seed in brackets), its loss, the
  seed-to-seed loss spread, and a note per parametrisation with the shifts and divergences."""
  params = list(summary)
  widths = sorted({w for s in summary.values() for w in s['widths']})
  head = '| width | ' + ' | '.join(f'{LABELS[p]} best log2 LR (per seed) | {LABELS[p]} loss '
                                   f'(seed spread)' for p in params) + ' |'
  rows = [head, '|' + ' --- |' * (1 + 2 * len(params))]
  fmt = lambda v: '—' if v is None else f'{v:g}'
  for w in widths:
    cells = []
    for p in params:
      r = summary[p]['widths'].get(w)
      if r is None:
        cells += ['—', '—']
        continue
      seeds = ', '.join(fmt(v) for v in r['per_seed'].values())
      edge = ' (grid edge)' if r['edge'] else ''
      spread = '' if r['seed_spread'] is None else f' (±{r["seed_spread"] / 2:.3f})'
      cells += [f'{fmt(r["argmin"])} ({seeds}){edge}',
                '—' if r['loss'] is None else f'{r["loss"]:.4f}{spread}']
    rows.append(f'| {w} | ' + ' | '.join(cells) + ' |')
  for p in params:
    s = summary[p]
    w0, w1 = min(s['widths']), max(s['widths'])
    per_seed = ', '.join(fmt(v) for v in s['per_seed_shift'].values())
    div = '; '.join(f'w{w}: {", ".join(fmt(x) for x in r["diverged"])}'
                    for w, r in s['widths'].items() if r['diverged'])
    rows.append(f'\n{LABELS[p]}: best log2 LR moves by {fmt(s["shift"])} from width {w0} '
                f'to {w1} (per seed: {per_seed}); largest move from width {w0}: '
                f'{fmt(s["max_shift"])}; diverged log2 LRs: {div or "none"}')
  return '\n'.join(rows)


def grid_table(points: Sequence[dict]) -> str:
  """Markdown table of the seed-mean held-out loss: a row per (parametrisation, width), a column
  per log2 LR; the row's argmin in bold, 'div' where any seed diverged."""
  lrs = sorted({p['log2_lr'] for p in points})
  rows = ['| | ' + ' | '.join(f'{lr:g}' for lr in lrs) + ' |', '|' + ' --- |' * (1 + len(lrs))]
  for param in [q for q in PARAMETRIZATIONS if any(p['param'] == q for p in points)]:
    for w in sorted({p['width'] for p in points if p['param'] == param}):
      curve = _curve(points, param, w)
      best = _argmin(curve)
      cells = ['' if lr not in curve else 'div' if not math.isfinite(curve[lr]) else
               f'**{curve[lr]:.3f}**' if lr == best else f'{curve[lr]:.3f}' for lr in lrs]
      rows.append(f'| {LABELS[param]} {w} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(rows)


def plot(points: Sequence[dict], path: str, title: str = '') -> None:
  """Figure-1-style PNG: held-out loss vs log2 LR, one curve per width; SP and muP panels."""
  plt = plots.pyplot()
  params = [p for p in PARAMETRIZATIONS if any(q['param'] == p for q in points)]
  widths = sorted({p['width'] for p in points})
  finite = [p['val_loss'] for p in points if p['val_loss'] is not None]
  lo = min(finite) if finite else 0.0
  hi = lo + 1.2
  fig, axes = plt.subplots(1, len(params), figsize=(5.2 * len(params), 4.2), squeeze=False,
                           sharey=True)
  cmap = plt.get_cmap('viridis', max(len(widths), 2))
  for ax, param in zip(axes[0], params):
    for i, w in enumerate(widths):
      c = cmap(i)
      curve = _curve(points, param, w)
      xs = [lr for lr, v in curve.items() if math.isfinite(v)]
      ax.plot(xs, [curve[x] for x in xs], '-o', color=c, ms=4, label=f'width {w}')
      for p in points:
        if p['param'] == param and p['width'] == w:
          if p['val_loss'] is None:
            ax.plot(p['log2_lr'], hi - 0.03, 'x', color=c, ms=6)
          else:
            ax.plot(p['log2_lr'], p['val_loss'], '.', color=c, alpha=0.35, ms=4)
      best = _argmin(curve)
      if best is not None:
        ax.plot(best, curve[best], '*', color=c, ms=13, mec='k', mew=0.6)
    ax.set_title(LABELS[param])
    ax.set_xlabel('log2 learning rate')
    ax.set_xticks(sorted({p['log2_lr'] for p in points}))
    ax.set_ylim(lo - 0.05, hi)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('validation loss (nats/token)')
  axes[0][-1].legend(fontsize=8)
  fig.suptitle(title or 'µTransfer: loss vs learning rate across widths (x: diverged; * best)',
               fontsize=10)
  plots.save(fig, path, dpi=110)


# --- files ---------------------------------------------------------------------------------

write_json = _io.write_json


def write_outputs(workdir: str, results: dict[str, Any]) -> dict[str, Any]:
  """results.json (points, summary, wall time), summary.json, table.md, sweep.png; returns the
  summary."""
  summary = summarize(results['points'])
  js = json.loads(json.dumps(summary))   # int keys -> str, as JSON has them
  write_json(os.path.join(workdir, 'results.json'), {**results, 'summary': js})
  write_json(os.path.join(workdir, 'summary.json'), js)
  text = (table(summary) + '\n\nSeed-mean held-out loss (nats/token) per log2 learning rate:\n\n'
          + grid_table(results['points']))
  _io.atomic_write(os.path.join(workdir, 'table.md'), text + '\n')
  plot(results['points'], os.path.join(workdir, 'sweep.png'))
  return summary
