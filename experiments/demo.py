"""`make demo`: train a small GPT, clone it 2x, train the clone and a random init, report.

    python -m experiments.demo --workdir=workdir/demo      (no other flags needed)

Runs on the embedded pydoc_text corpus in under 10 minutes on 2 CPU cores.  Writes
report.md, loss_curves.png, symmetry.png and results.json into --workdir; rerunning
reuses finished runs.  Settings: configs/clone.py (demo).
"""

from absl import app, flags, logging

from experiments import _errors
from hyperinit.studies import clone_experiment as experiment

_CONFIG = _errors.define_config_file('configs/clone.py', 'Clone config[:variant].',
                                     lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/demo', 'Where runs and the report go.')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  with _errors.user_errors('demo', _WORKDIR.value):
    experiment.main(_CONFIG.value, _WORKDIR.value, 'python -m experiments.demo')


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
