"""Faults around checkpoints and the trainer (issue 26): the newest step is checksummed, every
step broken stops the run, one run per workdir, changed hyper-parameters are refused, a
resumed run writes the rows of an uninterrupted one; the Checkpointer saves any pytree."""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_testing
from hyperinit import _checksums, checkpoint
from hyperinit.train import loop, metrics, start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _state(step):
  return {'state': {'w': jnp.full((8, 4), float(step)), 'step': jnp.int32(step)},
          'ema': {'w': jnp.full((8, 4), 0.5 * step)}}


def _flip_a_byte(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs
           if os.sep + 'ocdbt.process_' in d and os.sep + 'd' in d]
  victim = max(files, key=os.path.getsize)
  with open(victim, 'r+b') as fh:
    fh.seek(os.path.getsize(victim) // 2)
    b = fh.read(1)
    fh.seek(-1, 1)
    fh.write(bytes([b[0] ^ 0x40]))


def test_any_pytree_saves_as_its_items_and_restores_as_its_type(tmp_path):
  ck = checkpoint.Checkpointer(tmp_path / 'ck', save_every=1, async_save=False)
  ck.save(1, _state(1), meta={'note': 'mine'})
  ck.save(2, [jnp.arange(3.0), {'b': jnp.ones(2)}], force=True)   # not a Mapping: item 'state'
  ck.close()
  ck = checkpoint.Checkpointer(tmp_path / 'ck', read_only=True)
  assert ck.items(1) == ['ema', 'state'] and ck.items(2) == ['state']
  got, _ = ck.restore(_abstract(_state(0)), 1)
  assert set(got) == {'state', 'ema'} and int(got['state']['step']) == 1
  np.testing.assert_array_equal(got['ema']['w'], np.full((8, 4), 0.5))
  assert ck.meta(1)['note'] == 'mine'
  lst, _ = ck.restore(_abstract([jnp.zeros(3), {'b': jnp.zeros(2)}]), 2)
  np.testing.assert_array_equal(lst[0], np.arange(3.0))
  with pytest.raises(ValueError, match=r"\['meta'\]: item names must be identifiers"):
    checkpoint.Checkpointer(tmp_path / 'ck2').save(1, {'meta': jnp.zeros(2)}, force=True)


def test_the_newest_async_step_is_checksummed_when_orbax_commits_it(tmp_path, caplog):
  # A run killed right after its newest save committed: no later save, no wait() from us.
  ck = checkpoint.Checkpointer(tmp_path / 'ck', save_every=1, async_save=True)
  for step in (1, 2):
    ck.save(step, _state(step))
  ck.manager.wait_until_finished()   # orbax's own commit only (what a SIGKILL leaves behind)
  for step in (1, 2):
    assert _checksums.has(str(tmp_path / 'ck' / str(step))), step
  ck.close()
  _flip_a_byte(str(tmp_path / 'ck' / '2'))
  ck = checkpoint.Checkpointer(tmp_path / 'ck', save_every=1)
  restored = ck.restore_latest(_abstract(_state(0)))
  assert restored.step == 1 and int(restored.state['state']['step']) == 1
  assert re.search(r'checkpoint step 2 cannot be restored \(checkpoint step 2 is corrupt: .*CRC32.*'
                   r'set aside as .*ck\.set_aside/2-broken-', caplog.text)
  ck.close()


def test_a_step_without_checksums_restores_with_a_warning(tmp_path, caplog):
  ck = checkpoint.Checkpointer(tmp_path / 'ck', save_every=1, async_save=False)
  ck.save(1, _state(1))
  ck.close()
  os.remove(tmp_path / 'ck' / '1' / _checksums.FILE)   # as a version before checksums wrote it
  restored = checkpoint.Checkpointer(tmp_path / 'ck').restore_latest(_abstract(_state(0)))
  assert restored.step == 1
  assert 'checkpoint step 1 has no checksums' in caplog.text and 'unverified' in caplog.text


def test_every_step_broken_stops_and_moves_nothing_unless_asked_to_restart(tmp_path, caplog):
  ck = checkpoint.Checkpointer(tmp_path / 'ck', save_every=1, async_save=False)
  for step in (1, 2):
    ck.save(step, _state(step))
  ck.close()
  for step in (1, 2):
    _flip_a_byte(str(tmp_path / 'ck' / str(step)))
  ck = checkpoint.Checkpointer(tmp_path / 'ck', save_every=1)
  with pytest.raises(checkpoint.CheckpointError, match=r'every checkpoint step .* is broken '
                     r'\(step 2: .*CRC32.*; step 1: .*CRC32.*\); nothing was moved.*'
                     r'restart_if_all_corrupt=True'):
    ck.resume_step()
  assert ck.all_steps() == [1, 2]
  assert ck.resume_step(restart_if_all_corrupt=True) is None
  assert ck.all_steps() == []
  assert sorted(n.split('-')[0] for n in os.listdir(str(tmp_path / 'ck') + '.set_aside')) == [
      '1', '2']
  assert 'starting over from step 0' in caplog.text


def test_docs_checkpointer_snippet_runs_as_printed(tmp_path):
  text = open(os.path.join(ROOT, 'docs', 'training.md')).read()
  block = text.split('<!-- own-pytree-snippet -->')[1].split('```python\n')[1].split('```')[0]
  code = block.replace('/tmp/own_run', str(tmp_path / 'own_run'))
  first, again = {}, {}
  exec(compile(code, 'docs/training.md', 'exec'), first)   # pylint: disable=exec-used
  assert int(first['state']['state']['step']) == 20 and first['restored'] is None
  exec(compile(code, 'docs/training.md', 'exec'), again)   # pylint: disable=exec-used
  assert again['restored'].step == 20
  jax.tree.map(np.testing.assert_array_equal, again['state'], first['state'])


# --- one run per workdir -------------------------------------------------------------------

def test_a_second_run_on_a_workdir_refuses_at_once_naming_the_holder(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from hyperinit.checkpoint import lock; '
       'l = lock.WorkdirLock(sys.argv[1]).acquire(); print("held", flush=True); time.sleep(600)',
       str(tmp_path)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'),
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(checkpoint.WorkdirBusyError,
                       match=rf'in use by another run \(pid {holder.pid} on {os.uname().nodename}'):
      loop.train_and_evaluate(train_testing.tiny_lm_config(2), str(tmp_path))
    assert not os.path.exists(tmp_path / 'checkpoints')   # refused before anything was built
  finally:
    holder.kill()
    holder.wait()
  # the holder died (SIGKILL): its lock does not block a rerun
  with checkpoint.WorkdirLock(str(tmp_path)) as lk:
    assert json.loads(open(lk.path).read())['pid'] == os.getpid()


def test_a_stale_lock_file_of_a_dead_run_does_not_block(tmp_path):
  with open(tmp_path / 'run.lock', 'w') as f:
    json.dump({'pid': 999999, 'host': os.uname().nodename, 'since': 'yesterday'}, f)
  with checkpoint.WorkdirLock(str(tmp_path)):
    with pytest.raises(checkpoint.WorkdirBusyError, match=rf'pid {os.getpid()} on'):
      checkpoint.WorkdirLock(str(tmp_path)).acquire()   # another holder (even this process)


# --- the trainer: metrics after a resume, changed hyper-parameters -------------------------

def _config(steps=10, **kw):
  return train_testing.tiny_lm_config(steps, **{
      'batch_size': 8, 'log_every': 4, 'eval_every': 6, 'eval_batches': 1,
      'checkpoint.every': 5, 'optimizer.decay_steps': 20, 'mesh.data': -1, **kw})


def _rows(workdir):
  drop = ('steps_per_sec', 'tokens_per_sec')
  return [{k: v for k, v in r.items() if k not in drop} for r in metrics.read_jsonl(workdir)]


def test_resumed_run_writes_the_rows_of_an_uninterrupted_one_and_refuses_changed_hparams(
    tmp_path, caplog):
  ref = str(tmp_path / 'ref')
  loop.train_and_evaluate(_config(), ref)
  sent = []

  def sigterm_once(params):   # at the eval of step 6: the run stops after step 7
    del params
    if not sent:
      sent.append(1)
      os.kill(os.getpid(), signal.SIGTERM)
    return {}

  run = str(tmp_path / 'run')
  out = loop.train_and_evaluate(_config(), run, eval_metrics_fn=sigterm_once)
  assert out['preempted'] and out['step'] == 7      # 7: neither a log step nor a save step
  assert [r['step'] for r in _rows(run)] == [4, 6]   # no row at 7: its window is in step 7
  out = loop.train_and_evaluate(_config(), run)
  assert out['step'] == 10 and not out['preempted']
  assert _rows(run) == _rows(ref)                    # the row at 8 averages steps 5..8
  # a rerun with another learning rate is refused, naming the field; allowed with the flag
  changed = _config(12, **{'optimizer.learning_rate': 1e-2})
  with pytest.raises(start.ConfigChangedError, match=r'optimizer.learning_rate 0.003 -> 0.01;'):
    loop.train_and_evaluate(changed, run)
  changed.checkpoint.allow_config_change = True
  assert loop.train_and_evaluate(changed, run)['step'] == 12
  assert 'allow_config_change: resuming step 10 with changed hyper-parameters' in caplog.text
