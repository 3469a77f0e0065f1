"""Plotting for studies and notebooks: one place that sets matplotlib up and saves figures.

matplotlib is an optional dependency (`pip install hyperinit[plots]`); the
library below the studies never imports it.  Figures are written atomically
(`_io.atomic_write`), so a report's PNG is never half-written.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

import numpy as np

from hyperinit import _io


def pyplot():
  """`matplotlib.pyplot` on the non-interactive Agg backend (no display needed).

  Raises:
    ImportError: matplotlib is not installed, saying which extra installs it.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('plots need matplotlib: pip install "hyperinit[plots]"') from e
  if 'ipykernel' not in sys.modules:   # a notebook keeps its inline backend
    matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save(fig: Any, path: str, dpi: int | None = None, tight: bool = True) -> str:
  """Writes `fig` to `path` (format from the suffix) atomically and closes it."""
  plt = pyplot()
  try:
    if tight:
      fig.tight_layout()
    _io.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
  finally:
    plt.close(fig)
  return path


def metric_curves(rows: list[dict[str, Any]], path: str, metric: str = 'loss', title: str = '',
                  hline: tuple[float, str] | None = None) -> str:
  """Train and eval curves of `metric` from metrics.jsonl rows (`metrics.read_jsonl`) to `path`.

  `hline`: (value, label) of a reference line, e.g. the unigram entropy.
  """
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
  for split, style in (('train', '-'), ('eval', 'o-')):
    pts = [(r['step'], r[metric]) for r in rows if r['split'] == split and metric in r]
    if pts:
      ax.plot(*zip(*pts), style, label=f'{split} {metric}', ms=3)
  if hline is not None:
    ax.axhline(hline[0], color='gray', ls='--', label=hline[1])
  ax.set_xlabel('step')
  ax.set_ylabel(metric)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  return save(fig, path)


def coord_grid(results: Mapping[str, Any], path: str, title: str = '') -> str:
  """Coordinate-check PNG like the muP paper's: one row per result (e.g. 'SP Adam'), one
  column per step t; each line is one layer's mean |activation| vs width (log-log).

  `results`: {name: `mup.coord.CoordResult`} (widths, steps, acts {layer: [t, widths]}).
  """
  plt = pyplot()
  rows = list(results)
  steps = max(r.steps for r in results.values())
  fig, axes = plt.subplots(len(rows), steps, figsize=(3.4 * steps + 2.2, 2.8 * len(rows)),
                           squeeze=False, sharey='row')
  for i, name in enumerate(rows):
    res = results[name]
    cmap = plt.get_cmap('viridis', max(len(res.acts), 2))
    for t in range(res.steps):
      ax = axes[i][t]
      for j, (layer, a) in enumerate(res.acts.items()):
        y = np.where(a[t] > 0, a[t], np.nan)
        ax.plot(res.widths, y, marker='o', ms=2.5, lw=1,
                color='crimson' if layer in ('output', 'readout') else cmap(j), label=layer)
      ax.set_xscale('log', base=2)
      ax.set_yscale('log')
      ax.set_title(f'{name}  t={t + 1}', fontsize=9)
      ax.tick_params(labelsize=7)
      if t == 0:
        ax.set_ylabel('mean |activation|', fontsize=8)
      if i == len(rows) - 1:
        ax.set_xlabel('width', fontsize=8)
    lo, hi = axes[i][0].get_ylim()
    if hi / lo < 10:                     # at least a decade, so flat lines look flat
      mid = (hi * lo) ** 0.5
      axes[i][0].set_ylim(mid / 10 ** 0.5, mid * 10 ** 0.5)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='center right', fontsize=6, frameon=False)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0, 1 - 2.0 / (3.4 * steps + 2.2), 1))
  return save(fig, path, dpi=110, tight=False)
