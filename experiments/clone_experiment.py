"""Deprecated name of `experiments/clone_horizon.py`, kept for one release.

    python -m experiments.clone_horizon --workdir=workdir/clone_horizon     (use this)

It ran `studies.clone_horizon` under another study's name; it still runs it, with a
DeprecationWarning.
"""

import warnings

from absl import app, flags

from experiments import _errors, clone_horizon

flags.adopt_module_key_flags(clone_horizon)   # --helpshort lists the horizon main's flags


if __name__ == '__main__':
  warnings.warn('python -m experiments.clone_experiment is renamed experiments.clone_horizon '
                '(it runs studies.clone_horizon); the old name goes away next release',
                DeprecationWarning, stacklevel=1)
  app.run(clone_horizon.main, flags_parser=_errors.parse_flags)
