r"""Trains a language model or a ViT from a config file.

  python -m experiments.train --config=configs/lm.py:tiny,local --workdir=/tmp/lm
  python -m experiments.train --config=configs/vit.py:tiny --config.mesh.fsdp=-1 \
      --config.mesh.data=1 --workdir=/tmp/vit

Rerunning the same command resumes from the newest checkpoint in --workdir.
Multi-host: see BUILD_NOTES.md ("Pods and multi-host").
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import _errors
from hyperinit.train import distributed

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file[:variant].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics).')
_COORD = flags.DEFINE_string('coordinator_address', None,
                             'host:port of process 0 (env JAX_COORDINATOR_ADDRESS).')
_NPROC = flags.DEFINE_integer('num_processes', None, 'Number of processes (env JAX_NUM_PROCESSES).')
_PID = flags.DEFINE_integer('process_id', None, 'This process id (env JAX_PROCESS_ID).')
_DIST = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() with cluster '
                          'auto-detection (TPU pods, SLURM, GKE, MPI).')
_CPU_COLL = flags.DEFINE_string('cpu_collectives', None, "CPU collectives for multi-process CPU "
                                "runs, e.g. 'gloo'.")
_PREEMPT_RC = flags.DEFINE_integer('preempted_exit_code', 0, 'Exit status after a SIGTERM '
                                   'checkpoint (e.g. 3, so a job script can requeue itself).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  distributed.exit_during_startup(_PREEMPT_RC.value)
  with _errors.user_errors('train', _WORKDIR.value):
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value, auto=_DIST.value,
                           cpu_collectives=_CPU_COLL.value)
    from hyperinit.train import train_and_evaluate  # after distributed init
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info('finished at step %d%s; eval %s', result['step'],
               ' (preempted: rerun to resume)' if result['preempted'] else '', result['eval'])
  if result['preempted']:
    sys.exit(_PREEMPT_RC.value)


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
