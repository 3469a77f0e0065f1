"""Meta-trains a LoGAH (or GHN-3) graph hypernetwork on an architecture pool.

    python -m experiments.train_ghn --config=configs/ghn.py:vit_local --workdir=workdir/ghn_vit
    python -m experiments.train_ghn --config=configs/ghn.py:gpt_local --config.ghn.decoder=ghn3 \
        --workdir=workdir/ghn3_gpt
    python -m experiments.train_ghn --config=configs/ghn.py:vit_local --config.data.dataset=cifar10 ...

Rerunning the same command resumes from the latest checkpoint (also after SIGTERM). The trained
GHN is written to WORKDIR/ghn; use it with
`python -m experiments.predict --ghn_dir=WORKDIR/ghn --target=... --out=...`.

On a mesh (`--config.mesh.data=2 --config.mesh.fsdp=4`; docs/training.md, "GHN meta-training
on a mesh") and over several processes: `--coordinator_address=host:port --num_processes=N
--process_id=i` (or `--distributed` on a TPU pod / SLURM; `--cpu_collectives=gloo` on CPUs).
"""

from absl import app, flags, logging

from experiments import _errors
from hyperinit.train import distributed, ghn as train

_CONFIG = _errors.define_config_file('configs/ghn.py:vit_local',
                                     'GHN run config (configs/ghn.py:<variant>).',
                                     lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory (checkpoints, metrics, ghn/)',
                               required=True)
_COORD = flags.DEFINE_string('coordinator_address', None,
                             'host:port of process 0 (env JAX_COORDINATOR_ADDRESS).')
_NPROC = flags.DEFINE_integer('num_processes', None, 'Number of processes (env JAX_NUM_PROCESSES).')
_PID = flags.DEFINE_integer('process_id', None, 'This process id (env JAX_PROCESS_ID).')
_DIST = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() with cluster '
                          'auto-detection (TPU pods, SLURM, GKE, MPI).')
_CPU_COLL = flags.DEFINE_string('cpu_collectives', None, "CPU collectives for multi-process CPU "
                                "runs, e.g. 'gloo'.")


def main(argv):
  del argv
  distributed.exit_during_startup(0)   # a preempted GHN run also exits 0
  with _errors.user_errors('train_ghn', _WORKDIR.value):
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value, auto=_DIST.value,
                           cpu_collectives=_CPU_COLL.value)
    result = train.train_ghn(_CONFIG.value, _WORKDIR.value)
  logging.info('stopped at step %d (%s); last eval: %s', result['step'],
               'preempted' if result['preempted'] else 'done' if result['done'] else 'paused',
               result['eval'])


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
