"""Spectrum diagnostics of predicted (or any) weight matrices.

    stats = spectrum_stats(params, models.param_specs(target), min_dim=2 * ghn_cfg.rank)
    stats['top1_share'], stats['effective_rank'], stats['num_leaves']

A predicted kernel must look like a generic rank-r matrix, not a rank-1 one
(METHODS.md §3): with singular values s of the matrix,

    top-1 energy share = s_1^2 / sum s^2            (1 for rank 1; ~0.05 at random init)
    effective rank     = (sum s^2)^2 / sum s^4      (1 for rank 1; k for k equal values)

Every weight leaf with fan-in dims is read as the 2-D matrix [prod(fan-in
dims), prod(fan-out dims)] (the decoder's own view); a scanned leaf (leading
'layers' axis) counts one matrix per layer.  Only matrices whose both dims are
>= min_dim are counted: a rank-r prediction of a matrix with a side < 2r is
not expected to spread over r directions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hyperinit import spec as spec_lib
from hyperinit.logah.graph import is_scanned, slice_spec


def matrix_spectrum(w: np.ndarray) -> tuple[float, float]:
  """(top-1 energy share, effective rank) of a 2-D matrix (float64 SVD)."""
  w = np.asarray(w, np.float64)
  if w.ndim != 2:
    raise ValueError(f'expected a 2-D matrix, got shape {w.shape}')
  e = np.linalg.svd(w, compute_uv=False) ** 2
  total = e.sum()
  if total == 0:
    return float('nan'), 0.0
  return float(e[0] / total), float(total ** 2 / np.sum(e ** 2))


def leaf_matrices(params: Any, specs: Any, min_dim: int = 1) -> dict[str, np.ndarray]:
  """{path (+ '[layer]' for scanned leaves): 2-D matrix} of the weight leaves with both dims
  >= min_dim; `specs` is the params' ParamSpec tree (e.g. `models.param_specs(cfg)`)."""
  flat_p = spec_lib.flatten(params)
  flat_s = spec_lib.flatten(specs, is_leaf=spec_lib.is_spec)
  missing = sorted(set(flat_s) ^ set(flat_p))
  if missing:
    raise ValueError(f'params and specs trees differ at {missing[:5]}')
  out = {}
  for path, s in flat_s.items():
    if not s.fan_in:
      continue
    w = np.asarray(flat_p[path])
    scanned = is_scanned(s)
    layers = [(f'{path}[{i}]', w[i]) for i in range(w.shape[0])] if scanned else [(path, w)]
    fan_in = slice_spec(s).fan_in if scanned else s.fan_in
    for name, x in layers:
      rows = int(np.prod([x.shape[i] for i in fan_in]))
      order = list(fan_in) + [i for i in range(x.ndim) if i not in fan_in]
      m = np.transpose(x, order).reshape(rows, -1)
      if min(m.shape) >= min_dim:
        out[name] = m
  return out


def spectrum_stats(params: Any, specs: Any, min_dim: int = 1) -> dict[str, Any]:
  """Mean top-1 energy share and mean effective rank over `leaf_matrices(params, specs, min_dim)`.

  Returns {'top1_share', 'effective_rank', 'num_leaves', 'min_dim', 'per_leaf':
  {name: [top1_share, effective_rank]}}; the means are NaN when no leaf qualifies.
  """
  per = {k: list(matrix_spectrum(m)) for k, m in leaf_matrices(params, specs, min_dim).items()}
  vals = np.array(list(per.values()), np.float64).reshape(-1, 2)
  mean = vals.mean(0) if len(vals) else np.full(2, np.nan)
  return {'top1_share': float(mean[0]), 'effective_rank': float(mean[1]),
          'num_leaves': len(per), 'min_dim': int(min_dim), 'per_leaf': per}
