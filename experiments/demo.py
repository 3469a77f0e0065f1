"""`make demo`: train a small GPT, clone it 2x, train the clone and a random init, report.

    python -m experiments.demo --workdir=workdir/demo      (no other flags needed)

Runs on the embedded pydoc_text corpus in under 10 minutes on 2 CPU cores.  Writes
report.md, loss_curves.png, symmetry.png and results.json into --workdir; rerunning
reuses finished runs.  Settings: configs/clone.py (demo).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from hyperinit.studies import clone_experiment as experiment

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/clone.py', 'Clone config[:variant].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/demo', 'Where runs and the report go.')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  experiment.main(_CONFIG.value, _WORKDIR.value, 'python -m experiments.demo')


if __name__ == '__main__':
  app.run(main)
