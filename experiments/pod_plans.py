r"""Compiles docs/pods.md's rows for TPU slices (resumable: rows already in --out are skipped).

  nice -n 19 python -m experiments.pod_plans --out=docs/results/pod_plans.json \
      --table=docs/results/pod_plans_table.md

One compile at a time; each row's record (report fields + wall time) is written as soon
as it finishes, so a killed run resumes at the next row.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')   # the TPU compiler needs no TPU

from absl import app, flags

from configs import pods
from hyperinit.studies import pod_plans

_OUT = flags.DEFINE_string('out', 'docs/results/pod_plans.json', 'JSON rows (read and appended).')
_TABLE = flags.DEFINE_string('table', None, 'Also write the markdown table here.')
_ONLY = flags.DEFINE_string('only', None, 'Compile just this row id (job:preset@topology).')


def main(argv):
  del argv
  rows = pod_plans.load(_OUT.value)
  todo = list(pods.ROWS)
  for job, preset, topo in todo:
    rid = pod_plans.row_id(job, preset, topo)
    if pod_plans.done(rows, rid) or (_ONLY.value and rid != _ONLY.value):
      continue
    print(f'== {rid}', flush=True)
    rec = pod_plans.run_row(job, preset, topo, pods.get_config(preset),
                            log=lambda s: print(s, flush=True))
    rows.append(rec)
    pod_plans.save(_OUT.value, rows)
    if _TABLE.value:
      with open(_TABLE.value, 'w') as f:
        f.write(pod_plans.markdown(rows))
    print(f"   fits={rec['fits']} in {rec['row_wall_s']} s", flush=True)
    # a model no v5e slice fits gets a v5p row
    if (job == 'train' and topo == pods.V5E_SLICES[-1] and not rec['fits']
        and not pod_plans.done(rows, pod_plans.row_id(job, preset, pods.V5P_FALLBACK))):
      todo.append((job, preset, pods.V5P_FALLBACK))


if __name__ == '__main__':
  app.run(main)
