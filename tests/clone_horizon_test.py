"""The horizon experiment (experiments/clone_horizon.py, configs/clone_horizon.py): arms,
shared sources and baselines, overrides, the muP continuation, and the summary's numbers
recomputed from the runs' metrics.jsonl."""

import copy
import json
import os

import pytest

from configs import clone_horizon as horizon_configs
from hyperinit import checkpoint as ckpt_lib
from hyperinit import models
from hyperinit.studies import clone_horizon as horizon, clone_horizon_report as report
from hyperinit.studies import clone_report
from hyperinit.train import metrics

def test_parse_overrides():
  assert horizon.parse_overrides('optimizer.warmup_steps=0, optimizer.learning_rate=1e-3,'
                                 'a=True,b=cosine') == {
                                     'optimizer.warmup_steps': 0,
                                     'optimizer.learning_rate': 1e-3, 'a': True, 'b': 'cosine'}
  assert horizon.parse_overrides('') == {}
  with pytest.raises(ValueError, match="'warmup_steps': expected key=value"):
    horizon.parse_overrides('warmup_steps')


def test_arm_configs():
  cfg = horizon_configs.get_config()
  f4 = horizon.arm_config(cfg, 'f4')
  assert (f4.clone.factor, f4.source.model.embed_dim, f4.source.model.mlp_dim) == (4, 32, 128)
  assert horizon.arm_config(cfg, 'big_f2').source.model.embed_dim == 64
  assert horizon.arm_config(cfg, 'ws_no_warmup').target.optimizer.warmup_steps == 0
  assert horizon.arm_config(cfg, 'ws_lr_third').target.optimizer.learning_rate == 1e-3
  assert horizon.arm_config(cfg, 'f2').target.optimizer.warmup_steps == 80
  mup = horizon.arm_config(cfg, 'ws_mup_source_base', '/runs/src')
  assert mup.target.mup.enabled and mup.target.mup.base.name == '/runs/src'
  assert not horizon.arm_config(cfg, 'f2').target.mup.enabled
  # random init must pass the source by the margin inside the run: the pilot's sizes
  assert cfg.base.target.num_train_steps == 2 * cfg.base.source.num_train_steps
  bad = copy.deepcopy(cfg)
  bad.arms.f2.target = 'optimizer.warmup=3'
  with pytest.raises(KeyError, match="no field 'warmup'"):
    horizon.arm_config(bad, 'f2')
  bad = copy.deepcopy(cfg)
  bad.arms.f2.baseline = 'ws_no_warmup'
  with pytest.raises(ValueError, match="arm 'f2': baseline 'ws_no_warmup' must be an earlier"):
    horizon.run(bad, '/nonexistent')


@pytest.mark.parametrize('curve, want', [
    ([(0, 2.0), (10, 2.3), (20, 2.1), (30, 1.9), (40, 1.8)], (0.3, 10.0)),
    ([(0, 2.0), (10, 1.9), (20, 1.8), (30, 1.7), (40, 1.6)], (0.0, 0.0)),
])
def test_spike(curve, want):
  assert report.spike(curve, 40) == pytest.approx(want)


@pytest.mark.parametrize('curve, want', [
    ([(0, 2.0), (100, 1.99), (200, 1.9), (300, 1.8)], 100 + 100 * 0.04 / 0.09),  # 1.95 crossed
    ([(0, 2.0), (100, 2.1), (200, 2.0)], None),                 # never 0.05 below the start
    ([(0, 2.0), (10, 1.9)], 5.0),
])
def test_stall(curve, want):
  got = report.stall(curve)
  assert got == (None if want is None else pytest.approx(want))


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  """configs/clone_horizon.py:smoke through the driver experiments/clone_horizon.py calls
  (the main itself is imported by no test: two mains' --config flags cannot share a process;
  tests/cli_errors_test.py runs it as a subprocess)."""
  workdir = str(tmp_path_factory.mktemp('horizon'))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  cfg = horizon_configs.get_config('smoke')
  cfg.base.source.data.data_dir = cfg.base.target.data.data_dir = data_dir
  horizon.run(cfg, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    return workdir, data_dir, json.load(f)


def _evals(d):
  return [(r['step'], r['loss']) for r in metrics.read_jsonl(d) if r['split'] == 'eval']


def test_smoke_runs_every_arm_and_shares_sources_and_baselines(smoke):
  workdir, _, res = smoke
  for f in ('report.md', 'curves.png', 'results.json'):
    assert os.path.getsize(os.path.join(workdir, f)) > 0
  got = {(r['arm'], r['variant']) for r in res['records']}
  assert got == {('f2', 'noisy_symmetric'), ('f2', 'diagonal'), ('f4', 'noisy_symmetric'),
                 ('big_f2', 'noisy_symmetric'), ('ws_widen_opt_state', 'noisy_symmetric'),
                 ('ws_mup_source_base', 'noisy_symmetric')}
  sdir = os.path.join(workdir, 'seed_0')
  assert sorted(d for d in os.listdir(sdir) if d.startswith('source')) == [
      'source_big', 'source_small']
  trained_random = sorted(a for a in os.listdir(sdir)
                          if os.path.isdir(os.path.join(sdir, a, 'random')))
  assert trained_random == ['big_f2', 'f2', 'f4']
  by = {(r['arm'], r['variant']): r for r in res['records']}
  for arm in ('ws_mup_source_base', 'ws_widen_opt_state'):   # the study shares f2's baseline
    assert by[(arm, 'noisy_symmetric')]['random_curve'] == by[('f2', 'noisy_symmetric')][
        'random_curve'] == [list(p) for p in _evals(os.path.join(sdir, 'f2', 'random'))]
  assert by[('big_f2', 'noisy_symmetric')]['source_final'] == _evals(
      os.path.join(sdir, 'source_big'))[-1][1]
  f4, big = res['arms']['f4']['dst_cfg'], res['arms']['big_f2']['dst_cfg']
  assert f4['embed_dim'] == big['embed_dim'] == 64 and f4['num_heads'] == 2 * big['num_heads']
  assert '| f4: small ×4 | noisy_symmetric | 1 |' in open(os.path.join(workdir,
                                                                        'report.md')).read()


def test_smoke_numbers_recomputed_from_the_runs(smoke):
  workdir, _, res = smoke
  sdir = os.path.join(workdir, 'seed_0')
  for r in res['records']:
    clone = _evals(os.path.join(sdir, r['arm'], r['variant']))
    rnd = _evals(os.path.join(sdir, res['arms'][r['arm']]['baseline'] or r['arm'], 'random'))
    src = _evals(os.path.join(sdir, f'source_{r["source"]}'))
    if r['arm'] == 'ws_widen_opt_state':
      # resumed at the source's step S: reported from S on, starting at the source's final loss
      s0 = res['source_steps']
      assert clone[0][0] > s0 and ckpt_lib.read_meta(os.path.join(
          sdir, r['arm'], r['variant'], 'checkpoints'))['step'] == s0 + res['target_steps']
      clone = [(0, src[-1][1])] + [(st - s0, v) for st, v in clone]
    assert r['clone_curve'] == [list(p) for p in clone]
    # function preserved at step 0, the muP continuation included (fold_multipliers)
    assert clone[0][1] == pytest.approx(src[-1][1], abs=2e-5), r['arm']
    l_r = rnd[-1][1]
    assert r['random_final'] == l_r and r['final_gap'] == pytest.approx(clone[-1][1] - l_r)
    assert r['horizon_ok'] == (l_r <= src[-1][1] - res['margin'])
    t_c = clone_report.steps_to_stay_below(clone, l_r)
    assert r['t_clone'] == t_c
    src_cfg = models.config_from_dict(res['arms'][r['arm']]['src_cfg'])
    dst_cfg = models.config_from_dict(res['arms'][r['arm']]['dst_cfg'])
    seq = res['seq_len']

    def fpt(c):   # 6 N + 12 L T D; N: every param but the learned position table (tied readout)
      n = models.count_params(c) - c.max_len * c.embed_dim
      return 6 * n + 12 * c.num_layers * seq * c.embed_dim

    c = fpt(src_cfg) / fpt(dst_cfg)
    assert r['flops_ratio'] == pytest.approx(c, rel=1e-9)
    t_r = clone_report.steps_to_stay_below(rnd, l_r)
    if t_c:
      assert r['step_speedup'] == pytest.approx(t_r / t_c)
    if t_c is not None:
      assert r['compute_adjusted_speedup'] == pytest.approx(
          t_r / (t_c + res['source_steps'] * c))
  mup_dir = os.path.join(sdir, 'ws_mup_source_base', 'noisy_symmetric')
  meta = ckpt_lib.read_meta(os.path.join(mup_dir, 'checkpoints'))
  assert meta['mup']['base_config']['embed_dim'] == 16


def test_report_of_seeds_without_the_study(smoke, tmp_path):
  """A per-seed process of a seed outside study_seeds has no warm-up arms: report anyway."""
  _, _, res = smoke
  res = copy.deepcopy(res)
  res['records'] = [r for r in res['records'] if not r['arm'].startswith('ws_')]
  res['arms'] = {k: v for k, v in res['arms'].items() if not k.startswith('ws_')}
  report.write_report(str(tmp_path), res)
  assert os.path.getsize(tmp_path / 'curves.png') > 0
  assert '| f2: small ×2 | noisy_symmetric |' in (tmp_path / 'report.md').read_text()


def test_a_shared_baseline_of_another_architecture_is_refused(smoke):
  """f4's destination has twice big_f2's heads (half the head size): its random init is not a
  baseline for big_f2."""
  workdir, data_dir, _ = smoke
  cfg = horizon_configs.get_config('smoke')
  cfg.base.source.data.data_dir = cfg.base.target.data.data_dir = data_dir
  cfg.arms.big_f2.baseline = 'f4'
  with pytest.raises(ValueError, match=r'another architecture than this clone: .*num_heads'):
    horizon.run(cfg, workdir)
