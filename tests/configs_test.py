"""configs/: big_vision-style arguments (parse_arg), keyword presets, importable once installed."""

import os
import subprocess
import sys

import pytest

from configs import clone, common, coord_check, ghn, lm, mup_sweep, vit


def test_parse_arg_reads_preset_flags_and_typed_values():
  a = common.parse_arg('small, local,steps=200,lr=3e-3,name=x', 'lm', ('tiny', 'small'), 'tiny',
                       local=False, steps=int, lr=float, name=str, shuffle=True)
  assert a.to_dict() == dict(preset='small', local=True, steps=200, lr=3e-3, name='x',
                             shuffle=True)
  a = common.parse_arg(None, 'lm', ('tiny',), 'tiny', local=False, steps=int, shuffle=True)
  assert a.to_dict() == dict(preset='tiny', local=False, steps=None, shuffle=True)
  assert common.parse_arg('shuffle=false,local=1', 'lm', (), 'x', local=False,
                          shuffle=True).to_dict() == dict(preset='x', local=True, shuffle=False)


@pytest.mark.parametrize('arg, match', [
    ('huge', r"unknown lm config 'huge' in 'huge'; expected one preset of \['small', 'tiny'\], "
             r"flags \['local'\]"),
    ('tiny,small', r"names two presets \('tiny', 'small'\)"),
    ('tiny,depth=3', r"unknown lm config option 'depth'.*options: \['local', 'steps'\]"),
    ('steps=many', r"steps='many': expected a int"),
    ('local=maybe', r"local='maybe': expected true or false"),
    ('steps', r"unknown lm config 'steps'"),   # a valued option is not a flag
])
def test_parse_arg_errors_name_what_is_accepted(arg, match):
  with pytest.raises(ValueError, match=match):
    common.parse_arg(arg, 'lm', ('tiny', 'small'), 'tiny', local=False, steps=int)


def test_lm_and_vit_presets_and_run_options():
  tiny = lm.get_config()
  assert (tiny.model.name, tiny.data.dataset, tiny.data.seq_len, tiny.batch_size) == (
      'gpt2-tiny', 'pydoc_text', 128, 32)
  assert (tiny.num_train_steps, tiny.optimizer.learning_rate, tiny.optimizer.warmup_steps,
          tiny.optimizer.weight_decay) == (2000, 3e-3, 100, 0.0)
  small = lm.get_config('small')
  assert (small.model.num_layers, small.model.embed_dim, small.optimizer.weight_decay) == (
      6, 256, 0.1)
  big = lm.get_config('gpt2')
  assert (big.data.dataset, big.mesh.data, big.mesh.fsdp) == ('lm1b', 1, -1)
  loc = lm.get_config('gpt2,local,steps=200,lr=3e-3,batch=8,seed=1')
  assert (loc.data.dataset, loc.mesh.fsdp, loc.num_train_steps, loc.optimizer.warmup_steps,
          loc.optimizer.learning_rate, loc.batch_size, loc.seed) == (
              'pydoc_text', 1, 200, 20, 3e-3, 8, 1)
  assert lm.get_config('tiny,local') == lm.get_config('local,tiny')
  v = vit.get_config('B,local,steps=30')
  assert (v.model.name, v.data.dataset, v.model.patch_size, v.num_train_steps,
          v.optimizer.warmup_steps, v.mesh.fsdp) == ('vit-b', 'digits', 2, 30, 3, 1)
  assert vit.get_config('tiny').model.patch_size == 2
  for mod in (lm, vit):
    for name in mod.PRESETS:
      for arg in (name, f'{name},local'):
        c = mod.get_config(arg)
        assert c.profile_steps is None and c.num_train_steps > 0, arg


def test_every_study_config_builds_and_rejects_unknown_names():
  for name in clone.PRESETS:
    assert clone.get_config(name).source.num_train_steps == clone.PRESETS[name].source_steps
  for name in ghn.VARIANTS:
    ghn.get_config(name)
  w, d, s = (mup_sweep.get_config(x) for x in ('width', 'depth', 'search'))
  assert w.widths == (64, 128, 256, 512) and w.base_hps_file == s.results_file
  assert d.depths == (2, 4, 8) and d.mup.depth_alpha == 1.0 and s.mode == 'search'
  assert mup_sweep.get_config('depth,smoke').results_file == ''
  assert coord_check.get_config('local').seeds == 4
  for mod, what in ((clone, 'clone'), (ghn, 'ghn'), (mup_sweep, 'mup_sweep'),
                    (coord_check, 'coord_check')):
    with pytest.raises(ValueError, match=f"unknown {what} config 'nope'"):
      mod.get_config('nope')


def test_configs_import_outside_the_checkout(tmp_path):
  # Installed (make test's editable install), `configs` resolves without the repo on the path.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  out = subprocess.run([sys.executable, '-c', 'from configs import lm; '
                        'print(lm.get_config("tiny,local").num_train_steps)'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == '2000'
