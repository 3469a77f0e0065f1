"""Checkpoints: restore onto another mesh / device count, clear errors, nothing overwritten."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import hashlib

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import train_testing
from hyperinit import _checksums, checkpoint, models
from hyperinit.train import loop, step as step_lib


def _config(steps=6, **mesh):
  return train_testing.tiny_lm_config(steps, **{
      'batch_size': 16, 'optimizer.decay_steps': 20, 'log_every': 3, 'eval_every': 0,
      'checkpoint.every': 3, **{f'mesh.{k}': mesh.get(k, 1) for k in ('data', 'fsdp', 'tensor')}})


def _tree_digest(root):
  """{relative path: sha1} of every file under root."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      with open(p, 'rb') as fh:
        out[os.path.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def fsdp_run(tmp_path_factory):
  """6 FSDP steps on 8 devices, checkpoints at 3 and 6."""
  workdir = str(tmp_path_factory.mktemp('fsdp'))
  out = loop.train_and_evaluate(_config(fsdp=-1), workdir)
  return workdir, out


def test_restore_onto_another_mesh_and_device_count(fsdp_run):
  workdir, out = fsdp_run
  saved = jax.device_get(out['state'])
  config = _config(data=2, tensor=2)
  s = loop.setup(config, devices=jax.devices()[:4])  # TP x DP on 4 of the 8 devices
  ck = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  assert ck.all_steps() == [3, 6]
  target = step_lib.abstract_state(s.tx, s.shapes, s.shardings)
  loader = iter(loop.tasks.make_loader(config, s.task, 'train', train=True, seed=0))
  state, it = ck.restore(target, data_iter=loader)
  assert int(state.step) == 6
  kernel = state.params['block_0']['mlp']['wi']['kernel']
  assert kernel.sharding.spec == P(None, 'tensor') and len(kernel.sharding.device_set) == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), saved)
  # the data iterator continues where the run stopped: batch 7 of a fresh iterator
  batch7 = next(it)
  np.testing.assert_array_equal(batch7['inputs'], next(iter_after_6(config, s))['inputs'])
  # a data state written by another process count restores too (rows sharding: same meaning)
  other = _copy(os.path.join(workdir, 'checkpoints'), os.path.join(workdir, '..', 'other_pc'))
  os.rename(os.path.join(other, '6', 'data', 'process_0-of-1.json'),
            os.path.join(other, '6', 'data', 'process_0-of-2.json'))
  _checksums.write(os.path.join(other, '6'))   # as a 2-process save records it
  it2 = iter(loop.tasks.make_loader(config, s.task, 'train', train=True, seed=0))
  with pytest.raises(checkpoint.CheckpointError, match='no data-iterator state for process 0 of 1'):
    checkpoint.Checkpointer(other, read_only=True).restore(target, data_iter=it2)
  checkpoint.Checkpointer(other, read_only=True).restore(target, data_iter=it2,
                                                         data_any_process_count=True)
  np.testing.assert_array_equal(next(it2)['inputs'], next(iter_after_6(config, s))['inputs'])
  # and training continues on the new mesh
  state, m = s.train_step(state, loop.global_batch(batch7, s.batch_shardings,
                                                   s.task.batch_shapes(16)))
  assert np.isfinite(float(m['loss'])) and int(state.step) == 7


def iter_after_6(config, s):
  it = iter(loop.tasks.make_loader(config, s.task, 'train', train=True, seed=0))
  for _ in range(6):
    next(it)
  return it


def test_load_params_rebuilds_the_model(fsdp_run):
  workdir, out = fsdp_run
  params, cfg = checkpoint.load_params(os.path.join(workdir, 'checkpoints', '6'))
  assert cfg == models.get_config('gpt2-tiny')
  # Bit for bit the params the run ended with (step 6), on the host.
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(out['state'].params))
  # A step directory picks its own step; the params there are step 3's, not the latest.
  params3, _ = checkpoint.load_params(os.path.join(workdir, 'checkpoints', '3'))
  assert jax.tree.structure(params3) == jax.tree.structure(params)
  kernel = ('block_0', 'mlp', 'wi', 'kernel')
  get = lambda t: np.asarray(t[kernel[0]][kernel[1]][kernel[2]][kernel[3]])
  assert not np.array_equal(get(params3), get(params))
  tokens = np.zeros((1, 8), np.int32)
  assert models.apply_fn(cfg)(params, tokens).shape == (1, 8, 256)
  with pytest.raises(checkpoint.CheckpointError, match=r'no checkpoint for step 4 .* \[3, 6\]'):
    checkpoint.load_params(workdir, step=4)


def _copy(src, dst):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(src, dst)
  return str(dst)


def _params_chunk(ckdir, step):
  """The largest array-data file of a step's params."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ckdir, str(step), 'params'))
           for f in fs if os.sep + 'ocdbt.process_' in d]
  return max(files, key=os.path.getsize)


def _set_aside(ckdir):
  root = ckdir + '.set_aside'
  return sorted(os.listdir(root)) if os.path.isdir(root) else []


def test_every_saved_step_has_checksums_that_verify(fsdp_run):
  ck = checkpoint.Checkpointer(os.path.join(fsdp_run[0], 'checkpoints'), read_only=True)
  assert ck.all_steps() == [3, 6]
  assert all(ck.verify(s) for s in ck.all_steps())


@pytest.mark.parametrize('damage', ['bit_flip', 'truncate', 'missing_item'])
def test_broken_newest_step_is_set_aside_and_the_run_resumes_from_the_older(
    fsdp_run, tmp_path, damage, caplog):
  workdir = _copy(fsdp_run[0], tmp_path / 'run')
  ckdir = os.path.join(workdir, 'checkpoints')
  if damage == 'missing_item':
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(os.path.join(ckdir, '6', 'opt_state'))
  else:
    victim = _params_chunk(ckdir, 6)
    with open(victim, 'r+b') as fh:
      if damage == 'truncate':       # a torn write
        fh.truncate(os.path.getsize(victim) // 2)
      else:                          # one flipped bit: orbax alone restores this silently
        fh.seek(os.path.getsize(victim) // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x10]))
  broken = _tree_digest(os.path.join(ckdir, '6'))
  out = loop.train_and_evaluate(_config(steps=9, fsdp=-1), workdir)
  assert int(out['step']) == 9
  aside = _set_aside(ckdir)
  assert len(aside) == 1 and aside[0].startswith('6-broken-')
  # set aside untouched, never deleted
  assert _tree_digest(os.path.join(ckdir + '.set_aside', aside[0])) == broken
  assert checkpoint.Checkpointer(ckdir, read_only=True).all_steps() == [3, 6, 9]
  text = caplog.text
  assert 'checkpoint step 6 cannot be restored' in text and 'set aside as' in text
  if damage != 'missing_item':
    assert ('CRC32' in text) if damage == 'bit_flip' else ('bytes' in text)
  # the run continued from step 3: the same params as an unbroken run to 9
  ref = loop.train_and_evaluate(_config(steps=9, fsdp=-1), _copy(fsdp_run[0], tmp_path / 'ref'))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out['state'].params),
               jax.device_get(ref['state'].params))


def test_explicit_restore_step_is_verified_and_never_set_aside(fsdp_run, tmp_path):
  workdir = _copy(fsdp_run[0], tmp_path / 'run')
  ckdir = os.path.join(workdir, 'checkpoints')
  victim = _params_chunk(ckdir, 3)
  with open(victim, 'r+b') as fh:
    fh.seek(0)
    b = fh.read(1)
    fh.seek(0)
    fh.write(bytes([b[0] ^ 1]))
  before = _tree_digest(workdir)
  cfg = _config(steps=9, fsdp=-1)
  cfg.checkpoint.restore_step = 3
  with pytest.raises(checkpoint.CheckpointError, match=r'step 3 is corrupt: .*CRC32'):
    loop.train_and_evaluate(cfg, workdir)
  assert _tree_digest(workdir) == before and not _set_aside(ckdir)


def test_restore_step_earlier_continues_and_saves_past_the_later_steps(fsdp_run, tmp_path):
  workdir = _copy(fsdp_run[0], tmp_path / 'run')
  ckdir = os.path.join(workdir, 'checkpoints')
  later = _tree_digest(os.path.join(ckdir, '6'))
  cfg = _config(steps=9, fsdp=-1)
  cfg.checkpoint.restore_step = 3
  out = loop.train_and_evaluate(cfg, workdir)   # used to raise StepAlreadyExistsError at 6
  assert int(out['step']) == 9
  ck = checkpoint.Checkpointer(ckdir, read_only=True)
  assert ck.all_steps() == [3, 6, 9] and all(ck.verify(s) for s in ck.all_steps())
  aside = _set_aside(ckdir)
  assert len(aside) == 1 and aside[0].startswith('6-after-restore-3-')
  assert _tree_digest(os.path.join(ckdir + '.set_aside', aside[0])) == later


def test_a_config_that_fits_no_step_moves_nothing(fsdp_run, tmp_path):
  workdir = _copy(fsdp_run[0], tmp_path / 'run')
  before = _tree_digest(workdir)
  wrong = _config(steps=9, fsdp=-1)
  wrong.optimizer.name = 'sgd'       # another optimizer state: no step restores into it
  # a changed hyper-parameter is refused first, naming it
  with pytest.raises(checkpoint.CheckpointError, match=r"optimizer.name 'adamw' -> 'sgd'.*"
                     r'allow_config_change=True'):
    loop.train_and_evaluate(wrong, workdir)
  wrong.checkpoint.allow_config_change = True
  with pytest.raises(checkpoint.CheckpointError, match=r'checkpoints/6.*Nothing on disk was changed'):
    loop.train_and_evaluate(wrong, workdir)
  assert _tree_digest(workdir) == before   # run.lock too: emptied again when the run ends


def test_missing_pieces_are_clear_errors_and_nothing_is_overwritten(fsdp_run, tmp_path):
  workdir = _copy(fsdp_run[0], tmp_path / 'run')
  ckdir = os.path.join(workdir, 'checkpoints')
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(ckdir, '6', 'opt_state'))
  before = _tree_digest(workdir)
  cfg = _config(steps=9, fsdp=-1)
  cfg.checkpoint.restore_step = 6
  with pytest.raises(checkpoint.CheckpointError, match=r"incomplete: items \['opt_state'\]"):
    loop.train_and_evaluate(cfg, workdir)
  cfg.checkpoint.restore_step = 5
  with pytest.raises(checkpoint.CheckpointError, match=r'no checkpoint for step 5'):
    loop.train_and_evaluate(cfg, workdir)
  wrong = _config(steps=9, fsdp=-1)
  wrong.model.num_layers = 3
  wrong.checkpoint.restore_step = 3
  with pytest.raises(checkpoint.CheckpointError, match=r"another model: \{'num_layers': \(2, 3\)"):
    loop.train_and_evaluate(wrong, workdir)
  assert _tree_digest(workdir) == before
  with pytest.raises(FileNotFoundError, match='does not exist'):
    checkpoint.load_params(tmp_path / 'nowhere')


def test_relative_directory_saves_and_restores(tmp_path, monkeypatch):
  # orbax rejects relative paths; `--workdir=workdir/run` is what users type.
  monkeypatch.chdir(tmp_path)
  state = step_lib.TrainState(step=np.int32(3), params={'w': np.arange(4.0, dtype=np.float32)},
                              opt_state={'m': np.zeros(4, np.float32)}, rng=jax.random.key_data(
                                  jax.random.key(0)))
  ck = checkpoint.Checkpointer('rel/checkpoints', save_every=1)
  assert ck.save(3, state, force=True)
  ck.close()
  assert os.path.isdir(tmp_path / 'rel' / 'checkpoints' / '3')
  restored, _ = checkpoint.Checkpointer('rel/checkpoints', read_only=True).restore(
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state))
  np.testing.assert_array_equal(restored.params['w'], state.params['w'])
