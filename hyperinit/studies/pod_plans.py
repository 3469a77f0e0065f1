"""The pod plan table: one compiled plan per (job, model, slice), resumable row by row.

    rows = pod_plans.load(path)                       # [] if absent
    if not pod_plans.done(rows, key):
      rows.append(pod_plans.run_row(key, config))     # minutes: a real TPU compile
      pod_plans.save(path, rows)
    open('docs/pods.md', 'w').write(pod_plans.markdown(rows))

A training row compiles candidate layouts (`train.plan`, likeliest-to-fit and
biggest batch first) until one fits; a clone row compiles the sharded clone.
Each record keeps the report's fields plus the row's wall time.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from hyperinit.train import aot, aot_jobs, plan, roofline


def row_id(job: str, preset: str, topology: str) -> str:
  return f'{job}:{preset}@{topology}'


def load(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)


def save(path: str, rows: list[dict[str, Any]]) -> None:
  """Writes atomically (a killed driver leaves the previous file)."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(rows, f, indent=1, default=str)
  os.replace(tmp, path)


def done(rows: list[dict[str, Any]], rid: str) -> bool:
  return any(r['row'] == rid for r in rows)


def run_row(job: str, preset: str, topology: str, config: Any, *,
            max_candidates: int = 4, log=print) -> dict[str, Any]:
  """Compiles one row; returns its record (fits or not, never raises DoesNotFit)."""
  t0 = time.time()
  rec: dict[str, Any] = dict(row=row_id(job, preset, topology), job=job, preset=preset)
  if job == 'train':
    results = plan.search(config, topology, limit=max_candidates, first_fit=True, log=log)
    best = results[0]
    rec.update(best)
    rec['tried'] = [dict(r.get('candidate', {}), fits=r['fits'],
                         per_device_gib=r.get('per_device_gib'), error=r.get('error'))
                    for r in results]
  elif job == 'clone':
    try:
      rec.update(aot_jobs.compile_clone(config, topology))
    except aot.DoesNotFit as e:
      rec.update(e.report, error=str(e))
  else:
    raise ValueError(f'pod plan job {job!r}: expected train or clone')
  rec['topology'] = topology
  rec['row_wall_s'] = round(time.time() - t0, 1)
  return rec


def _cell(r: dict[str, Any]) -> list[str]:
  c = r.get('candidate') or {}
  mesh = r.get('mesh') or {}
  mesh_s = 'x'.join(f'{k}{v}' for k, v in mesh.items() if v > 1) or '-'
  gib = r.get('per_device_gib')
  if gib is None and r.get('per_device_bytes'):
    gib = r['per_device_bytes'] / roofline.GiB
  mfu = r.get('roofline', {}).get('mfu')
  return [r['job'], r['preset'], r['topology'], str(r['fits']).lower(), mesh_s,
          str(c.get('per_device_batch', '-')), str(c.get('remat', '-')),
          str(c.get('grad_accum', '-')), f'{gib:.2f}' if gib is not None else '-',
          f'{mfu:.2f}' if mfu is not None else '-', f"{r['row_wall_s']:.0f}"]


def markdown(rows: list[dict[str, Any]]) -> str:
  """The table of docs/pods.md (one line per row)."""
  head = ['job', 'model', 'slice', 'fits', 'mesh', 'per-device batch', 'remat', 'grad_accum',
          'GiB/device', 'MFU (estimate)', 'compile wall s']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  lines += ['| ' + ' | '.join(_cell(r)) + ' |' for r in rows]
  return '\n'.join(lines) + '\n'
