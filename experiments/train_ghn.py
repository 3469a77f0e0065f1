"""Meta-trains a LoGAH (or GHN-3) graph hypernetwork on an architecture pool.

    python -m experiments.train_ghn --config=configs/ghn.py:vit_local --workdir=workdir/ghn_vit
    python -m experiments.train_ghn --config=configs/ghn.py:gpt_local --config.ghn.decoder=ghn3 \
        --workdir=workdir/ghn3_gpt
    python -m experiments.train_ghn --config=configs/ghn.py:vit_local --config.data.dataset=cifar10 ...

Rerunning the same command resumes from the latest checkpoint (also after SIGTERM). The trained
GHN is written to WORKDIR/ghn; use it with
`python -m experiments.predict --ghn_dir=WORKDIR/ghn --target=... --out=...`.
"""

from absl import app, flags, logging

from experiments import _errors
from hyperinit.train import distributed, ghn as train

_CONFIG = _errors.define_config_file('configs/ghn.py:vit_local',
                                     'GHN run config (configs/ghn.py:<variant>).',
                                     lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory (checkpoints, metrics, ghn/)',
                               required=True)


def main(argv):
  del argv
  distributed.exit_during_startup(0)   # a preempted GHN run also exits 0
  with _errors.user_errors('train_ghn', _WORKDIR.value):
    result = train.train_ghn(_CONFIG.value, _WORKDIR.value)
  logging.info('stopped at step %d (%s); last eval: %s', result['step'],
               'preempted' if result['preempted'] else 'done' if result['done'] else 'paused',
               result['eval'])


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
