"""The clone-then-train pipeline (`make demo`, the experiment): speedup arithmetic, the smoke
config end to end through experiments/demo.py, the symmetry claims, the logits guard."""

import json
import os

import numpy as np
import pytest

from configs import clone as clone_configs
from hyperinit.cloning import plan as plan_lib
from hyperinit.cloning import widen
from hyperinit.studies import clone_experiment as experiment, clone_report as report
from hyperinit.train import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('curve, target, want', [
    ([(0, 3.0), (10, 2.0), (20, 1.0)], 1.5, 15.0),          # interpolated crossing
    ([(0, 3.0), (10, 1.0), (20, 2.0), (30, 1.0)], 1.5, 25.0),  # a bump: the LAST crossing counts
    ([(0, 1.0), (10, 0.9)], 1.5, 0.0),                      # starts below and stays
    ([(0, 3.0), (10, 2.0)], 1.5, None),                     # never
    ([(0, 3.0), (10, 1.5)], 1.5, 10.0),                     # ends exactly at the target
])
def test_steps_to_stay_below(curve, target, want):
  got = report.steps_to_stay_below(curve, target)
  assert got == (None if want is None else pytest.approx(want))


def test_configs():
  demo = clone_configs.get_config()
  assert demo.seeds == (0,) and demo.variants == ('noisy_symmetric',)
  assert demo.clone.factor == 2 and demo.target.model.name == demo.source.model.name
  assert set(clone_configs.ALL_VARIANTS) == set(plan_lib.VARIANTS)
  # the horizon: the destination trains twice the source's steps (random init passes it)
  assert demo.target.num_train_steps == 2 * demo.source.num_train_steps
  assert demo.source.model.embed_dim == 64 and demo.source.model.mlp_dim == 256
  with pytest.raises(ValueError, match="unknown clone config 'nope'"):
    clone_configs.get_config('nope')


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  """configs/clone.py:smoke through what experiments/demo.py's main calls (the `make demo` path).

  The main itself is driven in a subprocess by cli_errors_test: two mains defining --config cannot
  be imported into one pytest process."""
  workdir = str(tmp_path_factory.mktemp('smoke'))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  config = clone_configs.get_config('smoke')
  for t in (config.source, config.target):
    t.data.data_dir = data_dir
  # a relative workdir, as `make demo` passes (orbax needs absolute paths internally)
  experiment.main(config, os.path.relpath(workdir), 'python -m experiments.demo')
  return workdir, data_dir, experiment.load_results(workdir)


def _evals(workdir, key='loss'):
  return [(r['step'], r[key]) for r in metrics.read_jsonl(workdir)
          if r['split'] == 'eval' and key in r]


def test_smoke_writes_the_report_and_the_numbers_are_right(smoke):
  workdir, _, res = smoke
  for f in ('report.md', 'loss_curves.png', 'symmetry.png', 'results.json'):
    assert os.path.getsize(os.path.join(workdir, f)) > 100, f
  assert not [f for f in os.listdir(workdir) if '.tmp' in f]
  assert {r['name'] for r in res['runs']} == {'source', 'symmetric', 'symmetric+dropout0.1',
                                                'random'}
  assert all(c['rel_error'] <= 1e-5 for c in res['logits_checks'])
  src = _evals(os.path.join(workdir, 'source'))
  rnd = _evals(os.path.join(workdir, 'random'))
  l_r = rnd[-1][1]
  for row in res['rows']:
    clone = _evals(os.path.join(workdir, row['name']))
    # the clone starts where the source ended (function preserved through the checkpoint)
    assert clone[0] == (0, pytest.approx(src[-1][1], rel=1e-5))
    # independent recomputation of t_clone and the speedup from metrics.jsonl
    steps, losses = np.array(clone).T
    above = np.nonzero(losses > l_r)[0]
    if len(above) == 0:
      want = 0.0
    elif above[-1] == len(losses) - 1:
      want = None
    else:
      k = above[-1]
      want = np.interp(l_r, [losses[k + 1], losses[k]], [steps[k + 1], steps[k]])
    assert row['random_final'] == l_r
    assert row['t_clone'] == (None if want is None else pytest.approx(want))
    if row['status'] == 'reached':
      assert row['speedup'] == pytest.approx(row['t_random'] / want)
      assert row['adjusted'] == pytest.approx(
          row['t_random'] / (want + res['source_steps'] * res['flops']['ratio']))
  # Source / destination training FLOPs per token in closed form (6N + 12 L T D, N every
  # non-position parameter of a tied GPT-2: per block attention 4D^2 + 4D, MLP 2DM + M + D,
  # two LayerNorms 4D; final LayerNorm 2D; tied readout V D).
  cfg = clone_configs.get_config('smoke')
  m, t, n_layers = cfg.source.model, cfg.source.data.seq_len, 2

  def fpt(d, mlp, vocab=256):
    n = n_layers * (4 * d * d + 4 * d + 2 * d * mlp + mlp + d + 4 * d) + 2 * d + vocab * d
    return 6 * n + 12 * n_layers * t * d
  k = cfg.clone.factor
  assert res['flops']['src_per_token'] == fpt(m.embed_dim, m.mlp_dim)
  assert res['flops']['dst_per_token'] == fpt(k * m.embed_dim, k * m.mlp_dim)
  assert res['flops']['ratio'] == pytest.approx(fpt(m.embed_dim, m.mlp_dim) /
                                                fpt(k * m.embed_dim, k * m.mlp_dim), rel=1e-12)
  md = open(os.path.join(workdir, 'report.md')).read()
  assert '| symmetric clone |' in md and '| random init |' in md and 't_random / t_clone' in md
  assert 'compute-adjusted' in md and '![validation loss](loss_curves.png)' in md


def test_smoke_symmetry_claims(smoke):
  workdir = smoke[0]
  sym = [v for _, v in _evals(os.path.join(workdir, 'symmetric'), 'symmetry/overall')]
  drop = [v for _, v in _evals(os.path.join(workdir, 'symmetric+dropout0.1'), 'symmetry/overall')]
  rnd = [v for _, v in _evals(os.path.join(workdir, 'random'), 'symmetry/overall')]
  assert len(sym) == len(drop) == 3   # steps 0, 6, 12
  assert min(sym) > 1 - 1e-5, sym     # deterministic training: a symmetric clone stays symmetric
  assert drop[0] > 1 - 1e-5 and drop[-1] < 1 - 1e-3, drop   # dropout breaks the symmetry
  assert max(abs(v) for v in rnd) < 0.2, rnd                # random init: chance level


def test_rerun_reuses_runs_and_a_broken_clone_stops_it(smoke, monkeypatch, capsys):
  workdir, data_dir, _ = smoke
  config = clone_configs.get_config('smoke')
  for t in (config.source, config.target):
    t.data.data_dir = data_dir
  real = widen.clone_fn

  def broken(plan, **kw):   # a clone that is off by 1% in one kernel
    fn = real(plan, **kw)
    def wrapped(params, rng=None):
      out = fn(params, rng)
      out['block_0']['mlp']['wo']['kernel'] = out['block_0']['mlp']['wo']['kernel'] * 1.01
      return out
    return wrapped

  monkeypatch.setattr(widen, 'clone_fn', broken)
  with pytest.raises(experiment.CloneCheckError, match='symmetric clone is NOT function-'
                     'preserving: max relative logit error'):
    experiment.run(config, workdir)
  assert 'source: already trained' in capsys.readouterr().out
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['logits_checks'][0]['rel_error'] <= 1e-5   # the report was not touched


def test_reading_notes_name_the_early_rise_and_the_symmetry_rise():
  run = lambda name, evals, sym=(): {'name': name, 'evals': evals, 'symmetry': list(sym)}
  res = {'runs': [run('source', [(0, 3.0), (400, 2.534)]),
                  run('symmetric', [(0, 2.534), (100, 2.60), (200, 2.632), (400, 2.3), (800, 2.0)],
                      [(0, 1.0), (200, 0.80), (800, 0.86)]),
                  run('random', [(0, 5.5), (800, 2.15)], [(0, 0.0), (800, 0.01)])]}
  notes = ' '.join(report.reading_notes(res))
  assert "starts at the source's loss (2.534) and first rises, to 2.632 by step 200" in notes
  assert 'goes from 1.000 down to 0.800 (step 200) and rises back to 0.860 by step 800' in notes
  res['runs'][1]['evals'] = [(0, 2.534), (400, 2.3), (800, 2.0)]   # no rise: nothing claimed
  res['runs'][1]['symmetry'] = [(0, 1.0), (800, 0.9)]
  assert report.reading_notes(res) == []
