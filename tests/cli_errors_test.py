"""Errors a user can cause in the mains: one clear line, non-zero exit, nothing left behind;
the traceback only with --verbose."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ('--config.data.dataset=synthetic', '--config.data.seq_len=16', '--config.batch_size=4',
         '--config.num_train_steps=2', '--config.optimizer.warmup_steps=0')


def _train(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run([sys.executable, '-m', 'experiments.train', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _errors_only(stderr):
  return [l for l in stderr.splitlines() if l.strip() and not l.startswith(('I1', 'W1'))]


@pytest.mark.parametrize('args, match', [
    (('--config=configs/lm.py:huge',), "unknown lm config 'huge'"),
    (('--config=configs/lm.py:tiny', '--config.nope=3'), "a --config override failed .*'nope'"),
])
def test_bad_config_arguments_give_one_flags_line(tmp_path, args, match):
  p = _train(*args, f'--workdir={tmp_path / "run"}')
  assert p.returncode == 1
  assert 'Traceback' not in p.stderr, p.stderr[-2000:]
  fatal = [l for l in _errors_only(p.stderr) if l.startswith('FATAL')]
  assert len(fatal) == 1, p.stderr[-2000:]
  import re  # pylint: disable=g-import-not-at-top
  assert re.search(match, fatal[0]), fatal[0]
  assert not (tmp_path / 'run').exists()


def test_bad_config_value_one_line_no_workdir_left_and_verbose_traceback(tmp_path):
  bad = ('--config=configs/lm.py:tiny', *SMALL, '--config.optimizer.name=rmsprop')
  p = _train(*bad, f'--workdir={tmp_path / "run"}')
  assert p.returncode == 1
  assert 'Traceback' not in p.stderr, p.stderr[-2000:]
  last = _errors_only(p.stderr)[-1]
  assert last.startswith("train: error: optimizer.name='rmsprop'; expected one of"), last
  assert '--verbose' in last
  assert not (tmp_path / 'run').exists()                     # created by this run: removed
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('keep')
  p = _train(*bad, f'--workdir={tmp_path / "mine"}', '--verbose')
  assert p.returncode == 1 and 'Traceback' in p.stderr      # --verbose: the traceback
  assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'keep'   # not ours: untouched


def _flip_a_bit(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, 'params'))
           for f in fs if os.sep + 'ocdbt.process_' in d]
  victim = max(files, key=os.path.getsize)
  with open(victim, 'r+b') as fh:
    fh.seek(os.path.getsize(victim) // 2)
    b = fh.read(1)
    fh.seek(-1, 1)
    fh.write(bytes([b[0] ^ 0x04]))


def _digest(root):
  import hashlib  # pylint: disable=g-import-not-at-top
  return {os.path.relpath(os.path.join(d, f), root):
          hashlib.sha1(open(os.path.join(d, f), 'rb').read()).hexdigest()
          for d, _, fs in os.walk(root) for f in fs}


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_run_resumes(tmp_path):
  run = tmp_path / 'run'
  base = ('--config=configs/lm.py:tiny', *SMALL[:-2], '--config.optimizer.warmup_steps=0',
          '--config.checkpoint.every=2', '--config.eval_every=0', f'--workdir={run}')
  p = _train(*base, '--config.num_train_steps=4')
  assert p.returncode == 0, p.stderr[-2000:]
  _flip_a_bit(run / 'checkpoints' / '4')
  broken = _digest(run / 'checkpoints' / '4')
  p = _train(*base, '--config.num_train_steps=6')
  assert p.returncode == 0, p.stderr[-2000:]
  assert 'checkpoint step 4 cannot be restored' in p.stderr and 'CRC32' in p.stderr
  assert 'resumed from' in p.stderr and 'at step 2' in p.stderr
  aside = os.listdir(str(run / 'checkpoints') + '.set_aside')
  assert len(aside) == 1 and _digest(os.path.join(str(run / 'checkpoints') + '.set_aside',
                                                  aside[0])) == broken
  assert sorted(os.listdir(run / 'checkpoints')) == ['2', '4', '6']


def _main(module, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('module, args, match', [
    ('experiments.demo', ('--config=configs/clone.py:nope',), "unknown clone config 'nope'"),
    ('experiments.demo', ('--config.clone.factr=2',), "a --config override failed .*'factr'"),
    ('experiments.clone_horizon', ('--config.arms.f2.target=optimizer.warmup=0',),
     "clone_horizon: error: .*no field 'warmup'"),
    ('experiments.clone_horizon', ('--config=configs/clone_horizon.py:big',),
     "unknown clone_horizon config 'big'"),
    ('experiments.mup_sweep', ('--config=configs/mup_sweep.py:wide',),
     "unknown mup_sweep config 'wide'"),
    ('experiments.mup_sweep', ('--config.nope=1',), "a --config override failed .*'nope'"),
    ('experiments.coord_check', ('--config.nope=1',), "a --config override failed .*'nope'"),
    ('experiments.ghn_experiment', ('--config.nope=1',), "a --config override failed .*'nope'"),
    ('experiments.train_ghn', ('--config.nope=1',), "a --config override failed .*'nope'"),
])
def test_study_mains_give_one_line(tmp_path, module, args, match):
  import re  # pylint: disable=g-import-not-at-top
  p = _main(module, *args, f'--workdir={tmp_path / "w"}')
  assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stderr[-2000:]
  assert re.search(match, _errors_only(p.stderr)[-1] if 'error:' in match
                   else next(l for l in _errors_only(p.stderr) if l.startswith('FATAL'))), (
                       p.stderr[-1500:])
  assert not (tmp_path / 'w').exists()


MAINS = ('train', 'demo', 'clone', 'clone_horizon', 'predict', 'train_ghn', 'ghn_experiment',
         'mup_sweep', 'coord_check')


@pytest.mark.parametrize('name', MAINS)
def test_helpshort_lists_every_flag_of_the_main_with_a_one_line_help(name):
  p = _main(f'experiments.{name}', '--helpshort')
  assert p.returncode in (0, 1) and 'Traceback' not in p.stderr, p.stderr[-1500:]  # absl: 1
  out = p.stdout
  assert f'experiments/{name}.py:' in out, out[-1500:]
  flags_listed = [l.strip() for l in out.splitlines() if l.startswith('  --')]
  assert flags_listed, out
  for line in flags_listed:
    name_part, _, help_part = line.partition(':')
    assert help_part.strip() and help_part.strip() != 'path to config file.', line


def test_the_old_horizon_main_name_still_runs_with_a_deprecation_warning(tmp_path):
  p = _main('experiments.clone_experiment', '--config=configs/clone_horizon.py:big',
            f'--workdir={tmp_path / "w"}')
  assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stderr[-2000:]
  assert 'DeprecationWarning: python -m experiments.clone_experiment is renamed ' \
         'experiments.clone_horizon' in p.stderr
  assert "unknown clone_horizon config 'big'" in p.stderr
