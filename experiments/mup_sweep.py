"""µTransfer LR sweep: loss vs log2 LR per width, SP vs muP (sweep.png, table.md, summary.json).

    python -m experiments.mup_sweep --config=configs/mup_sweep.py --workdir=workdir/mup_sweep
    python -m experiments.mup_sweep --config=configs/mup_sweep.py:local --workdir=/tmp/sweep

Rerunning the same command continues an interrupted sweep.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from hyperinit.studies import mup_sweep as sweep, mup_sweep_report as sweep_report

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/mup_sweep.py', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/mup_sweep', 'where the results go')


def main(argv):
  del argv
  results = sweep.run_sweep(_CONFIG.value, _WORKDIR.value, log=logging.info)
  summary = sweep_report.write_outputs(_WORKDIR.value, results)
  print(sweep_report.table(summary))
  print(f'\nwall time of this run: {results["seconds"] / 60:.1f} min; wrote {_WORKDIR.value}/'
        '{results.json, summary.json, table.md, sweep.png}')


if __name__ == '__main__':
  app.run(main)
