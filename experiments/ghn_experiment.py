"""LoGAH vs GHN-3 vs random init on held-out wider and deeper targets (3 seeds, CPU scale).

    python -m experiments.ghn_experiment --config=configs/ghn.py:experiment --workdir=workdir/ghn_exp
    python -m experiments.ghn_experiment --config=configs/ghn.py:experiment_smoke --workdir=/tmp/smoke

Trains one GHN per pool, decoder and seed, then fine-tunes each held-out target from random init
and from every GHN's prediction with the same trainer settings. Writes finetune.jsonl, results.md
(tables), PNG plots and timing.json to the workdir; rerunning resumes where it stopped.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from hyperinit.studies import ghn_experiment as experiment

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/ghn.py:experiment',
                                          'experiment config (configs/ghn.py:experiment[_smoke])',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'experiment directory', required=True)


def main(argv):
  del argv
  if 'pools' not in _CONFIG.value:
    raise app.UsageError('--config must be an experiment variant (configs/ghn.py:experiment or '
                         'experiment_smoke), with config.pools')
  summary = experiment.run(_CONFIG.value, _WORKDIR.value)
  logging.info('results (also in %s/results.md):\n%s', _WORKDIR.value, summary['table'])


if __name__ == '__main__':
  app.run(main)
