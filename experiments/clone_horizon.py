"""HyperCloning at the paper's horizon (random init trained until it passes the source).

    python -m experiments.clone_horizon --workdir=workdir/clone_horizon

Runs `hyperinit.studies.clone_horizon` with configs/clone_horizon.py (its one-arm
building blocks are `studies.clone_experiment`'s, which `experiments/demo.py` runs).
Formerly experiments/clone_experiment.py (that name still runs this, with a warning).

Sources 2 x 32 and 2 x 64, clones x2 and x4, every variant, 3 seeds, plus the warm-up study
(configs/clone_horizon.py); report.md, curves.png and results.json (committed as
docs/results/clone_experiment.json) go to --workdir.  A rerun skips finished runs.
"""

import sys

from absl import app, flags, logging

from experiments import _errors
from hyperinit.studies import clone_experiment, clone_horizon

_CONFIG = _errors.define_config_file('configs/clone_horizon.py', 'Horizon config[:preset].',
                                     lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/clone_horizon', 'Runs and report.')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  config = _CONFIG.value
  with config.unlocked():
    config.command = ' '.join(['python -m experiments.clone_horizon'] + sys.argv[1:])
  with _errors.user_errors('clone_horizon', _WORKDIR.value):
    try:
      clone_horizon.run(config, _WORKDIR.value)
    except clone_experiment.CloneCheckError as e:
      sys.exit(f'FAILED: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
