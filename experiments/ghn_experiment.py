"""LoGAH vs GHN-3 vs random init on held-out wider and deeper targets (3 seeds, CPU scale).

    python -m experiments.ghn_experiment --config=configs/ghn.py:experiment --workdir=workdir/ghn_exp \
        --export_dir=docs/results
    python -m experiments.ghn_experiment --config=configs/ghn.py:experiment_smoke --workdir=/tmp/smoke
    python -m experiments.ghn_experiment --report=docs/results/logah_experiment.json   # tables + plots

Trains one GHN per task and decoder, then fine-tunes each held-out target from random init (two
LRs) and from every GHN's prediction (at random init's best LR and a quarter of it; GHN-3 with
noise) with the same trainer settings. Writes runs.jsonl, logah_experiment.json (the summary),
results.md, PNG plots and timing.json to the workdir; rerunning resumes where it stopped.
--export_dir also copies the summary (as logah_experiment.json), results.md and the plots there.
"""

import json
import os
import shutil

from absl import app, flags, logging

from experiments import _errors
from hyperinit.studies import ghn_experiment as experiment

_CONFIG = _errors.define_config_file('configs/ghn.py:experiment',
                                     'Experiment config (configs/ghn.py:experiment[_smoke]).',
                                     lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'experiment directory')
_EXPORT = flags.DEFINE_string('export_dir', None, 'also copy the summary, table and plots here')
_REPORT = flags.DEFINE_string('report', None, 'only regenerate results.md and the plots (next '
                              'to it) from this summary JSON')


def main(argv):
  del argv
  with _errors.user_errors('ghn_experiment'):
    if _REPORT.value:
      with open(_REPORT.value) as f:
        paths = experiment.write_report(json.load(f), os.path.dirname(_REPORT.value) or '.')
      logging.info('wrote %s', ', '.join(paths))
      return
    if not _WORKDIR.value:
      raise app.UsageError('--workdir is required (or --report=SUMMARY.json)')
    if 'pools' not in _CONFIG.value:
      raise app.UsageError('--config must be an experiment variant (configs/ghn.py:experiment or '
                           'experiment_smoke), with config.pools')
    summary = experiment.run(_CONFIG.value, _WORKDIR.value)
    if _EXPORT.value:
      os.makedirs(_EXPORT.value, exist_ok=True)
      shutil.copy(os.path.join(_WORKDIR.value, experiment.SUMMARY), _EXPORT.value)
      paths = experiment.write_report(summary, _EXPORT.value, plot=bool(_CONFIG.value.plots))
      logging.info('exported %s', ', '.join(paths))
    with open(os.path.join(_WORKDIR.value, 'results.md')) as f:
      logging.info('results (also in %s/results.md):\n%s', _WORKDIR.value, f.read())


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
