"""Once installed (`pip install -e .`), the mains and benchmarks run from any directory, and
`--config=configs/x.py:...` finds the installed config when cwd has no configs/ (a pod's batch
job launched from its own directory)."""

import os
import subprocess
import sys

import pytest

from experiments import _errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cwd, *args):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


def test_config_path_falls_back_to_the_installed_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  installed = os.path.join(ROOT, 'configs', 'lm.py')
  assert _errors.config_path('configs/lm.py:gpt2,steps=3') == installed + ':gpt2,steps=3'
  assert _errors.config_path('./configs/lm.py') == installed
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'lm.py').write_text('')
  assert _errors.config_path('configs/lm.py:gpt2') == 'configs/lm.py:gpt2'   # cwd's file wins
  assert _errors.config_path('my/lm.py:x') == 'my/lm.py:x'                   # not configs/: as is


@pytest.mark.parametrize('args, want', [
    (('-m', 'experiments.clone', '--helpshort'), '--factor'),
    # the preset's own error proves configs/lm.py was found and loaded outside the checkout
    (('-m', 'experiments.train', '--config=configs/lm.py:nope', '--workdir=w'),
     "unknown lm config 'nope'"),
])
def test_mains_run_outside_the_checkout(tmp_path, args, want):
  p = _run(str(tmp_path), *args)
  assert want in p.stdout + p.stderr, p.stdout + p.stderr
  assert 'No module named' not in p.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_benchmarks_are_installed():
  import benchmarks  # pylint: disable=g-import-not-at-top
  assert os.path.dirname(benchmarks.__file__) == os.path.join(ROOT, 'benchmarks')
