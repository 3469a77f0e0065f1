r"""Trains a language model or a ViT from a config file.

  python -m experiments.train --config=configs/lm.py:tiny,local --workdir=/tmp/lm
  python -m experiments.train --config=configs/vit.py:tiny --config.mesh.fsdp=-1 \
      --config.mesh.data=1 --workdir=/tmp/vit

Rerunning the same command resumes from the newest checkpoint in --workdir.  A run stopped
by SIGTERM (or Ctrl-C), at any point, exits with --preempted_exit_code (default 75,
EX_TEMPFAIL: "temporary failure, retry"), never 0, so a scheduler that counts 0 as done
requeues it.  Multi-host: see BUILD_NOTES.md ("Pods and multi-host").
"""

import os
import sys

from absl import app, flags, logging

from experiments import _errors
from hyperinit import _logging
from hyperinit.train import distributed

_CONFIG = _errors.define_config_file(None, 'Training config file[:variant].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics).')
_COORD = flags.DEFINE_string('coordinator_address', None,
                             'host:port of process 0 (env JAX_COORDINATOR_ADDRESS).')
_NPROC = flags.DEFINE_integer('num_processes', None, 'Number of processes (env JAX_NUM_PROCESSES).')
_PID = flags.DEFINE_integer('process_id', None, 'This process id (env JAX_PROCESS_ID).')
_DIST = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() with cluster '
                          'auto-detection (TPU pods, SLURM, GKE, MPI).')
_CPU_COLL = flags.DEFINE_string('cpu_collectives', None, "CPU collectives for multi-process CPU "
                                "runs, e.g. 'gloo'.")
# sysexits.h EX_TEMPFAIL: not finished, retry; a scheduler must not count it as done (0)
# nor as a failure of the program (1, or 128 + signal).
EX_TEMPFAIL = os.EX_TEMPFAIL if hasattr(os, 'EX_TEMPFAIL') else 75
_PREEMPT_RC = flags.DEFINE_integer('preempted_exit_code', EX_TEMPFAIL, 'Exit status of a run '
                                   'stopped by SIGTERM / Ctrl-C (at start-up, or after saving a '
                                   'checkpoint): rerun the command to resume.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  distributed.catch_stop_signals()   # a signal sets a flag, read at safe points (also at start-up)
  verbose = flags.FLAGS.verbose
  _logging.quiet_libraries(verbose=verbose)   # orbax / grain INFO only with --verbose
  with _errors.user_errors('train', _WORKDIR.value):
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value, auto=_DIST.value,
                           cpu_collectives=_CPU_COLL.value)
    from hyperinit.train import train_and_evaluate  # after distributed init
    try:
      result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except FloatingPointError as e:   # the message names the checkpoint and the remedy
      if verbose:
        raise
      sys.exit(f'train: error: {e} [--verbose for the traceback]')
  if result['preempted']:
    logging.warning('stopped at step %d (%s): rerun the same command to resume; exiting with '
                    'status %d', result['step'], distributed.stop_requested(), _PREEMPT_RC.value)
    sys.exit(_PREEMPT_RC.value)
  logging.info('finished at step %d; eval %s', result['step'], result['eval'])


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
