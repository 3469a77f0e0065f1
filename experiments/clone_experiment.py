"""HyperCloning at small scale: speedup over random init, variant ablation, symmetry, seeds.

    python -m experiments.clone_experiment --config=configs/clone.py:experiment --workdir=DIR

Same pipeline as `make demo` (hyperinit.studies.clone_experiment) over several seeds and clone
variants plus a symmetric clone trained with dropout; the report (mean ± std over seeds)
goes to DIR/report.md with loss_curves.png and symmetry.png.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from hyperinit.studies import clone_experiment as experiment

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/clone.py:experiment',
                                          'Clone config[:variant].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/clone_experiment', 'Runs and report.')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  experiment.main(_CONFIG.value, _WORKDIR.value, 'python -m experiments.clone_experiment')


if __name__ == '__main__':
  app.run(main)
