"""Issue 26 items 9 and 10 (predict): --target in the GHN's own notation with key=value
overrides, a warning past max_dim, --out checked before predicting, orbax INFO quiet.

The notation must mean what the GHN's eval log meant: a target name resolves through the
GHN's training config (`tasks.targets`), so `L2-D32-H2` of the smoke GPT GHN has that
run's max_len 16, not the default pool's 64.
"""

import json
import logging
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import ghn as ghn_configs
from hyperinit import _logging, checkpoint, errors, models
from hyperinit.logah import ghn as ghn_lib, samplers, saving, tasks
from hyperinit.train import predict_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_GHN = ghn_lib.GHNConfig(hidden=16, layers=1, heads=2, rank=4, max_dim=256)


@pytest.fixture(scope='module')
def ghn_run(tmp_path_factory):
  """A GHN training workdir as train_ghn leaves it: ghn/ and checkpoints/ whose meta holds the
  run config (here: configs/ghn.py:smoke_gpt, whose sequences are 16 long)."""
  w = tmp_path_factory.mktemp('ghn_run')
  config = ghn_configs.get_config('smoke_gpt')
  saving.save_ghn(str(w / 'ghn'), SMALL_GHN, ghn_lib.init(SMALL_GHN, jax.random.key(0)))
  checkpoint.save_params(str(w / 'checkpoints'), {'step': jax.numpy.zeros(())},
                         {'config': json.loads(config.to_json_best_effort())})
  return w, config


def test_notation_resolves_like_the_ghn_eval_log(ghn_run):
  w, config = ghn_run
  name = config.finetune.targets.split(',')[0]             # 'L2-D32-H2', as the log names it
  got = predict_job.resolve_target(name, str(w / 'ghn'))
  assert got == tasks.targets(config)[name]
  assert got.max_len == int(config.data.seq_len) == 16
  assert got.num_layers == 2 and got.embed_dim == 32 and got.num_heads == 2


def test_notation_without_a_training_config_uses_the_cpu_pools(tmp_path):
  gpt = predict_job.resolve_target('L6-D128-H4')
  assert gpt == tasks.parse_target('L6-D128-H4', samplers.POOLS['gpt-cpu'])
  vit = predict_job.resolve_target('L6-D128-H4-P2-M256')
  assert isinstance(vit, models.ViTConfig) and (vit.patch_size, vit.mlp_dim) == (2, 256)


def test_key_value_overrides_are_typed_by_the_field():
  cfg = predict_job.resolve_target('L2-D32-H2, num_layers=3 ,vocab_size=100,tie_embeddings=true,'
                                   'init_std=0.01')
  assert (cfg.num_layers, cfg.vocab_size, cfg.tie_embeddings, cfg.init_std) == (3, 100, True, 0.01)
  assert predict_job.resolve_target('gpt2-tiny,num_layers=1') == models.get_config(
      'gpt2-tiny', num_layers=1)


@pytest.mark.parametrize('text, kind, match', [
    ('gpt9', errors.UserInputError, r"'gpt9' is neither a model preset .* L6-D128-H4"),
    ('L2-D32', ValueError, r'not of the form L<layers>-D<width>-H<heads>'),
    ('L2-D32-H2,layers', errors.UserInputError, r"item 'layers': expected key=value"),
    ('L2-D32-H2,depth=3', KeyError, r"'depth': TransformerConfig has no such field; fields: "),
    ('L2-D32-H2,num_layers=two', errors.UserInputError, r"num_layers='two': expected a int"),
    ('', errors.UserInputError, r'expected a preset name or L<layers>'),
])
def test_bad_targets_name_what_is_wrong(text, kind, match):
  with pytest.raises(kind, match=match):
    predict_job.resolve_target(text)


def test_a_target_wider_than_max_dim_warns_and_wraps(tmp_path, caplog):
  target = predict_job.resolve_target('L1-D32-H2,vocab_size=300')   # vocab 300 > K = 256
  n, path = predict_job.widest(target)
  assert n == 300 and path in ('embed/embedding', 'lm_head/kernel')   # the vocab axis
  with caplog.at_level(logging.WARNING):
    params = predict_job.predict_to(str(tmp_path / 'out'), target, SMALL_GHN,
                                    ghn_lib.init(SMALL_GHN, jax.random.key(0)))
  assert re.search(rf"target dimension 300 \(leaf {path}\) exceeds the GHN's max_dim "
                   r'K = 256: factor rows past K wrap around', caplog.text)
  table = params['token_embed']['embedding']
  assert table.shape == (300, 32)
  np.testing.assert_array_equal(table[256:], table[:44])   # rows past K repeat rows 0..43
  narrow = predict_job.resolve_target('L1-D32-H2,vocab_size=256')
  assert predict_job.wrap_warning(SMALL_GHN, narrow) is None
  assert predict_job.wrap_warning(SMALL_GHN.replace(decoder='ghn3'), target) is None


def test_library_info_lines_are_filtered_unless_verbose():
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  rec = lambda path, level: logging.LogRecord('absl', level, path, 1, 'm', None, None)
  orbax_info = rec(f'{os.sep}x{os.sep}orbax{os.sep}checkpoint{os.sep}a.py', logging.INFO)
  keep = [rec(f'{os.sep}x{os.sep}orbax{os.sep}a.py', logging.WARNING),
          rec(f'{os.sep}x{os.sep}hyperinit{os.sep}a.py', logging.INFO)]
  logger = absl_logging.get_absl_logger()
  _logging.quiet_libraries()
  assert not logger.filter(orbax_info) and all(logger.filter(r) for r in keep)
  _logging.quiet_libraries(verbose=True)
  assert logger.filter(orbax_info)
  _logging.quiet_libraries()


def _predict(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run([sys.executable, '-m', 'experiments.predict', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_out_is_checked_before_predicting_and_overwrite_replaces_it(tmp_path):
  out = tmp_path / 'pred'
  out.mkdir()
  (out / 'old.txt').write_text('x')
  p = _predict('--target=L1-D16-H2', f'--out={out}')
  assert p.returncode == 1, p.stderr[-2000:]
  lines = [l for l in p.stderr.splitlines() if l.strip()]
  assert 'untrained GHN' not in p.stderr, 'predicted before checking --out'
  assert lines[-1].startswith(f"predict: error: --out '{out}' exists and is not empty; pass "
                              '--overwrite to replace it'), lines[-1]
  p = _predict('--target=L1-D16-H2', f'--out={out}', '--overwrite')
  assert p.returncode == 0, p.stderr[-2000:]
  _, cfg = checkpoint.load_params(str(out))
  assert (cfg.num_layers, cfg.embed_dim) == (1, 16)
  info = [l for l in p.stderr.splitlines() if l.startswith('I')]
  assert len(info) <= 3, info                      # orbax's ~20 INFO lines are quiet
  assert info[-1].endswith(f'wrote {models.count_params(cfg):,} params of L1-D16-H2 to {out}')
