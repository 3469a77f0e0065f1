"""Two real JAX processes on loopback (gloo CPU collectives), 4 devices each, FSDP over all 8.

The processes run the absl entry point, checkpoint, stop, and resume from the
checkpoint in a second launch; the result must equal a single-process
8-device run of the same config.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import json
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import lm as lm_configs
from hyperinit import checkpoint
from hyperinit.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.multiprocess

FLAGS = ['--config=configs/lm.py:tiny', '--config.data.dataset=synthetic',
         '--config.data.seq_len=32', '--config.batch_size=16', '--config.optimizer.warmup_steps=2',
         '--config.optimizer.decay_steps=10', '--config.eval_every=0', '--config.log_every=1',
         '--config.checkpoint.every=3', '--config.mesh.data=1', '--config.mesh.fsdp=-1']


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(workdir, steps, env):
  """Runs the entry point as process 0 and 1 of 2; returns their stderr."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', *FLAGS, f'--config.num_train_steps={steps}',
       f'--workdir={workdir}', f'--coordinator_address=localhost:{port}', '--num_processes=2',
       f'--process_id={i}', '--cpu_collectives=gloo'],
      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errs = []
  for p in procs:
    _, err = p.communicate(timeout=400)
    errs.append(err)
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-4000:]
  return errs


def test_two_processes_fsdp_checkpoint_restore_equals_single_process(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  workdir = str(tmp_path / 'mp')
  _launch(workdir, 6, env)                     # steps 1-6, checkpoints at 3 and 6
  ck = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  assert ck.all_steps() == [3, 6]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints', '6', 'data'))) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']
  errs = _launch(workdir, 10, env)             # restores step 6 (both processes), runs 7-10
  assert all('at step 6' in e for e in errs)
  assert checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 read_only=True).all_steps() == [6, 9, 10]

  # Reference: one process, 8 devices.  The loaders give every process its rows of one
  # global batch, so the global batches are the same as with 2 processes.
  config = lm_configs.get_config('tiny')
  for flag in FLAGS[1:]:
    key, value = flag[len('--config.'):].split('=')
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value) if node[leaf] is not None else int(value)
  config.num_train_steps = 10
  ref = loop.train_and_evaluate(config, str(tmp_path / 'ref'))

  params, _ = checkpoint.load_params(workdir, step=10)   # written by 2 processes, read by 1
  # atol: key biases have a zero true gradient and follow float noise through Adam.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               jax.device_get(params), jax.device_get(ref['state'].params))
  rows = {r['step']: r['loss'] for r in map(json.loads, open(os.path.join(workdir,
                                                                           'metrics.jsonl')))}
  ref_rows = {r['step']: r['loss'] for r in map(json.loads, open(
      os.path.join(tmp_path, 'ref', 'metrics.jsonl')))}
  assert sorted(rows) == list(range(1, 11))
  np.testing.assert_allclose([rows[s] for s in range(1, 11)],
                             [ref_rows[s] for s in range(1, 11)], rtol=1e-5)
