"""µTransfer sweeps and the base-HP search: report arithmetic, n-gram baselines, smoke presets."""

import glob
import json
import math
import os
import struct

import numpy as np
import pytest

from configs import mup_sweep as sweep_configs
from hyperinit.studies import mup_baselines, mup_search
from hyperinit.studies import mup_sweep as sweep
from hyperinit.studies import mup_sweep_report as report


def _rec(param, width, seed, lr, val, tail=None):
  return {'param': param, 'width': width, 'depth': 2, 'seed': seed, 'log2_lr': float(lr),
          'val_loss': val, 'train_tail_loss': val + 0.1 if tail is None and val is not None
          else tail, 'diverged': val is None, 'diverged_at': None if val else 7, 'seconds': 1.0}


def test_summary_argmins_losses_at_base_lr_and_tables():
  recs = []
  for w, (sp_best, mup_best) in {64: (-8, -8), 128: (-9, -8), 512: (-11, -7)}.items():
    for seed in (0, 1):
      for lr in range(sp_best - 1, sp_best + 2):     # SP: a window that follows its optimum
        recs.append(_rec('sp', w, seed, lr, 3.0 + 0.1 * abs(lr - sp_best) + 0.02 * seed))
      for lr in range(-10, -5):                       # muP: fixed grid; wider is better
        b = mup_best - (w == 512 and seed == 1)
        val = None if (w == 512 and lr == -6 and seed == 0) else \
            3.0 - 0.01 * math.log2(w / 64) + (0.1, 0.2)[seed] * abs(lr - b) + 0.04 * seed
        recs.append(_rec('mup', w, seed, lr, val))
  s = report.summarize(recs, 'width')
  sp, mu = s['sp'], s['mup']
  assert [sp['sizes'][w]['argmin'] for w in (64, 128, 512)] == [-8, -9, -11]
  assert sp['base_argmin'] == -8 and sp['sizes'][512]['shift'] == -3
  assert sp['sizes'][512]['at_base_lr'] is None            # -8 was not run at 512
  assert mu['sizes'][512]['diverged'] == [-6.0] and mu['sizes'][512]['argmin'] == -8
  assert mu['sizes'][512]['per_seed'] == {0: -7, 1: -8}
  assert not mu['sizes'][64]['edge'] and mu['sizes'][512]['shift'] == 0
  at = mu['sizes'][512]['at_base_lr']                       # seeds: 3.07 and 3.01 at 2^-8
  assert at['mean'] == pytest.approx(3.04) and at['spread'] == pytest.approx(0.06)
  assert at['per_seed'] == pytest.approx([3.07, 3.01])
  assert mu['sizes'][128]['at_base_lr_tail']['mean'] == pytest.approx(
      mu['sizes'][128]['at_base_lr']['mean'] + 0.1)
  text = report.tables(s, 'width', {'bigram_seen': 2.5, 'unigram_seen': 3.2, 'seen_tokens': 10,
                                    'bigram_split': 2.4, 'unigram_split': 3.1,
                                    'split_tokens': 20})
  assert '| 512 | -11 (-11, -11) | -8 (-7, -8) |' in text
  assert '| 64 | 3.0100 ± 0.0100 | 3.1100 ± 0.0100 | 3.0200 ± 0.0200 | 3.1200 ± 0.0200 |' in text
  assert 'bigram 2.5000 / unigram 3.2000 (fitted on the 10 training tokens' in text
  grid = report.grid_table(recs, 'width').splitlines()
  assert grid[0] == '| | -12 | -11 | -10 | -9 | -8 | -7 | -6 |'
  assert grid[-1].startswith('| muP 512 |') and '| div |' in grid[-1]


def test_ngram_losses_closed_form():
  # a deterministic cycle 0 -> 1 -> 2 -> 0: the bigram is (nearly) certain, the unigram uniform
  x = np.array([0, 1, 2] * 200)
  y = np.roll(x, -1)
  b = mup_baselines.ngram_losses(x, y, x[:30], y[:30], vocab=4, alphas=(1e-3, 1.0))
  assert b['bigram_alpha'] == 1e-3 and b['bigram'] < 0.01
  assert b['unigram'] == pytest.approx(math.log(3), abs=0.01)
  with pytest.raises(ValueError, match='non-empty'):
    mup_baselines.ngram_losses(x, y[:5], x, y)


def _smoke(mode, **overrides):
  c = sweep_configs.get_config(f'{mode},smoke')
  for k, v in overrides.items():
    c[k] = v
  return c


def _tb_scalars(logdir):
  """{tag: [(step, value)]} of a TensorBoard run dir (TFRecord framing: length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    raw, i = open(path, 'rb').read(), 0
    while i < len(raw):
      n = struct.unpack('<Q', raw[i:i + 8])[0]
      event = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_width_smoke_sweep_records_baselines_divergence_and_resume(tmp_path):
  c = _smoke('width')
  c.lr_offsets.mup = (0.0, 23.0)        # 2^-9 and 2^14 (no clipping: the loss blows up)
  c.optimizer.grad_clip_norm = 0.0
  logs = []
  out = sweep.run_sweep(c, str(tmp_path), log=logs.append)
  recs = {(r['param'], r['width'], r['log2_lr']): r for r in out['records']}
  # SP's window follows LR ~ 1/width: centre -9 at width 16, -10 at width 32
  assert sorted(recs) == [('mup', 16, -9.0), ('mup', 16, 14.0), ('mup', 32, -9.0),
                          ('mup', 32, 14.0), ('sp', 16, -9.0), ('sp', 32, -10.0)]
  for (param, width, lr), r in recs.items():
    assert r['depth'] == 1 and r['seed'] == 0
    if lr == 14.0:
      assert r['diverged'] and r['val_loss'] is None and r['diverged_at'] <= 4, r
    else:              # 4 steps: near ln(256) = 5.55 but finite and below it
      assert not r['diverged'] and 4.0 < r['val_loss'] < math.log(256), r
      assert 4.0 < r['train_tail_loss'] < 6.0, r
  # muP at the base width with default base HPs and readout_init='base' is SP exactly
  # (up to rounding: q.k x sqrt(d)/d vs / sqrt(d))
  assert recs[('mup', 16, -9.0)]['val_loss'] == pytest.approx(recs[('sp', 16, -9.0)]['val_loss'],
                                                             rel=1e-5)
  assert recs[('mup', 32, -9.0)]['val_loss'] != recs[('mup', 16, -9.0)]['val_loss']
  b = out['baselines']
  assert b['val_tokens'] > 30000 and b['seen_tokens'] == 4 * 8 * 64
  assert b['split_tokens'] > 400000 and 2.3 < b['bigram_split'] < b['unigram_split'] < 3.5
  assert any('ETA' in m for m in logs)
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 6 and {'val_loss', 'train_tail_loss', 'diverged'} <= set(json.loads(
      lines[0]))
  # TensorBoard: one run per record, its chunk-mean training curve and the final validation loss
  runs = sorted(os.listdir(tmp_path / 'tb'))
  assert len(runs) == 6 and 'mup_w16_L1_s0_lr-9' in runs, runs
  ok = recs[('mup', 16, -9.0)]
  assert _tb_scalars(tmp_path / 'tb' / 'mup_w16_L1_s0_lr-9') == {
      'train/loss': [(2 * (i + 1), pytest.approx(v, rel=1e-6)) for i, v in enumerate(ok['curve'])],
      'eval/loss': [(4, pytest.approx(ok['val_loss'], rel=1e-6))]}
  assert len(ok['curve']) == 2
  assert set(_tb_scalars(tmp_path / 'tb' / 'mup_w16_L1_s0_lr+14')) == {'train/loss'}
  summary = report.write_outputs(str(tmp_path), out)
  assert summary['mup']['sizes'][16]['diverged'] == [14.0]
  assert sorted(os.listdir(tmp_path)) == ['metrics.jsonl', 'results.json', 'summary.json',
                                          'sweep.png', 'table.md', 'tb']
  # interrupted: drop the width-32 records; the rerun computes only those, identically
  path = tmp_path / 'results.json'
  saved = json.loads(path.read_text())
  saved['records'] = [r for r in saved['records'] if r['width'] != 32]
  path.write_text(json.dumps(saved))
  logs.clear()
  again = sweep.run_sweep(c, str(tmp_path), log=logs.append)
  assert any('6 runs (3 to run)' in m for m in logs), logs
  strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]
  assert strip(again['records']) == strip(out['records'])
  # anything but the grid changes the runs: starting over, naming the field
  conf = json.loads(c.to_json_best_effort())
  conf['base_hps_used'], conf['lr_centres_used'] = again['base_hps'], again['lr_centres']
  assert len(sweep.saved_records(str(path), {**conf, 'seeds': 3}, logs.append)) == 6
  assert sweep.saved_records(str(path), {**conf, 'steps': 8}, logs.append) == {}
  assert "other ['steps']: starting over" in logs[-1]


def test_search_smoke_writes_base_hps_that_the_width_sweep_reads(tmp_path):
  c = _smoke('search')
  hps_file = str(tmp_path / 'hps.json')
  c.results_file = hps_file
  logs = []
  res = mup_search.run_search(c, str(tmp_path / 'search'), log=logs.append)
  # stage 1: two LRs at the defaults; stage 2: each field x2 then /2 (one move at most)
  assert res['sp_log2_lr'] in (-9.0, -8.0) and res['width'] == 16
  assert len(res['trials']) >= 2 + 2 and any('trial' in m for m in logs)
  best = min(t['loss'] for t in res['trials'])
  assert res['loss'] == pytest.approx(best, abs=c.search.min_gain + 1e-9)
  n_runs = len(res['trials']) * int(c.search.seeds)
  assert len(os.listdir(tmp_path / 'search' / 'tb')) == n_runs
  assert len((tmp_path / 'search' / 'metrics.jsonl').read_text().splitlines()) == n_runs
  saved = json.loads(open(hps_file).read())
  assert saved['base_hps'] == res['base_hps'] and saved['log2_lr'] == res['log2_lr']
  # a rerun reuses every trial
  logs.clear()
  again = mup_search.run_search(c, str(tmp_path / 'search'), log=logs.append)
  assert again['base_hps'] == res['base_hps'] and not any(m.startswith('trial') for m in logs)
  w = _smoke('width', base_hps_file=hps_file, parametrizations='mup')
  w.widths = (16,)
  out = sweep.run_sweep(w)
  assert out['base_hps'] == res['base_hps']
  assert [r['log2_lr'] for r in out['records']] == [res['log2_lr'] - 1, res['log2_lr']]
  tuned = [t for t in res['trials'] if t['base_hps'] == res['base_hps']
           and t['log2_lr'] == res['log2_lr']][0]
  assert out['records'][1]['val_loss'] == pytest.approx(tuned['val_loss'][0], rel=1e-6)
  with pytest.raises(ValueError, match='tuned for 4 steps'):
    sweep.run_sweep(_smoke('width', base_hps_file=hps_file, steps=8))
  with pytest.raises(ValueError, match='not a base-HP search result'):
    sweep.run_sweep(_smoke('width', base_hps_file=str(tmp_path / 'search' / 'search.json')))


def test_depth_smoke_sweep_uses_complete_p(tmp_path):
  c = _smoke('depth')
  assert c.mup.depth_alpha == 1.0 and c.sp_lr_slope == 0.0
  out = sweep.run_sweep(c, str(tmp_path))
  assert sorted({(r['param'], r['depth']) for r in out['records']}) == [
      ('mup', 1), ('mup', 2), ('sp', 1), ('sp', 2)]
  prog = sweep.build_program(c, 'mup', 16, 2, sweep.load_base_hps(c)[0])
  assert prog.model_cfg.residual_mult == 0.5 and not prog.model_cfg.scale_residual_init
  summary = report.write_outputs(str(tmp_path), out, {'mup': 'CompleteP'})
  assert set(summary['mup']['sizes']) == {1, 2}
  with pytest.raises(ValueError, match="'sp,ntk'"):
    sweep.run_sweep(_smoke('depth', parametrizations='sp,ntk'))
