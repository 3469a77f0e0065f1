"""GHN meta-training: config plumbing, SIGTERM + resume, learning, and the smoke experiment.

The smoke experiment (configs/ghn.py:experiment_smoke: 2 pools x {logah, ghn3}, then fine-tuning
with 2 seeds) runs once per module.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import json
import signal

import jax
import numpy as np
import pytest

from configs import ghn as ghn_configs
from hyperinit import models, spec
from hyperinit.logah import ghn as ghn_lib, meta, noise as noise_lib, saving, tasks
from hyperinit.train import ghn as train
from hyperinit.studies import ghn_experiment as experiment, ghn_finetune


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))  # the embedded sets are built here on first use


def _config(variant, data_dir):
  cfg = ghn_configs.get_config(variant)
  for c in (cfg.pools.values() if 'pools' in cfg else [cfg]):
    c.data.data_dir = data_dir  # the fine-tuning config follows by reference
  return cfg


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory, data_dir):
  cfg = _config('experiment_smoke', data_dir)
  workdir = str(tmp_path_factory.mktemp('smoke'))
  return cfg, workdir, experiment.run(cfg, workdir)


def test_config_plumbing(data_dir):
  cfg = _config('vit_local', data_dir)
  spec_ = tasks.pool_spec(cfg)
  assert (spec_.image_size, spec_.num_channels, spec_.num_classes) == (8, 1, 10)  # from digits
  t = tasks.parse_target('L6-D128-H4-P2', spec_)
  assert (t.num_layers, t.embed_dim, t.num_heads, t.patch_size, t.mlp_dim) == (6, 128, 4, 2, 512)
  assert tasks.parse_target('L2-D64-H4-M96', spec_).mlp_dim == 96
  gpt = _config('gpt_local', data_dir)
  t = tasks.targets(gpt)['L6-D128-H4']
  assert (t.vocab_size, t.max_len, t.num_layers) == (256, 64, 6)
  assert gpt.finetune.data.seq_len == 64 and gpt.finetune.task == 'lm'
  with pytest.raises(ValueError, match='L<layers>'):
    tasks.parse_target('6x128', spec_)
  gpt.data.dataset = 'digits'
  with pytest.raises(ValueError, match='is image'):
    tasks.pool_spec(gpt)
  # LM rows {'inputs', 'targets'} [B, T] -> tokens [B, T + 1].
  chunk = np.arange(10).reshape(2, 5)
  np.testing.assert_array_equal(
      tasks.meta_batch({'inputs': chunk[:, :-1], 'targets': chunk[:, 1:]})['tokens'], chunk)
  # Groups: a seeded permutation per epoch.
  order = [train.group_order(3, 7, s) for s in range(1, 10)]
  assert all(sorted(order[i:i + 3]) == [0, 1, 2] for i in (0, 3, 6))
  assert order == [train.group_order(3, 7, s) for s in range(1, 10)]
  for v in ghn_configs.VARIANTS:
    ghn_configs.get_config(v)
  # The experiment's held-out targets are deeper and wider than every pool member, and the
  # pools hold >= 64 distinct, untied architectures.
  exp = ghn_configs.get_config('experiment')
  for task, pool_cfg in exp.pools.items():
    pool_cfg.data.data_dir = data_dir
    pool, groups = tasks.make_pool(pool_cfg)
    assert len(set(pool)) >= 64 and len(groups) * int(pool_cfg.pool.meta_batch) == len(pool)
    assert all(not getattr(c, 'tie_embeddings', False) for c in pool)
    for t in tasks.targets(pool_cfg).values():
      assert t.num_layers > max(c.num_layers for c in pool), task
      assert t.embed_dim > max(c.embed_dim for c in pool), task
      # The 'logah-clone' arm's source (1/clone_factor as wide) exists for every target.
      assert ghn_finetune.source_config(t, exp.clone_factor).embed_dim * exp.clone_factor == (
          t.embed_dim)
  with pytest.raises(ValueError, match='unknown ghn config'):
    ghn_configs.get_config('vit_huge')
  # config.tasks picks the pools a run handles (one process per task); a wrong name is refused
  # before anything is trained.
  assert exp.tasks == 'gpt,vit'
  exp.tasks = 'gpt,imagenet'
  with pytest.raises(ValueError, match=r"config.tasks names \['imagenet'\]"):
    experiment.run(exp, os.path.join(data_dir, 'unused'))


def test_smoke_experiment_writes_every_run_table_and_plot(smoke_run, data_dir):
  cfg, workdir, summary = smoke_run
  runs = summary['runs']
  for task in ('vit', 'gpt'):
    target = next(iter(tasks.targets(cfg.pools[task])))
    best = summary['best_random_lr'][task][target]
    assert best in (1e-3, 3e-4)
    # Random init at both LRs; each GHN at the best LR and a quarter of it; every seed; the
    # GHN-3 start with noise 0.1 of the init std, LoGAH's without; LoGAH's half-width prediction
    # cloned 2x ('logah-clone'); LoGAH's ends ('logah-io').
    want = {('random', lr, 0.0) for lr in (1e-3, 3e-4)} | {
        (d, best * m, n) for d, n in (('logah', 0.0), ('ghn3', 0.1), ('logah-clone', 0.0),
                                      ('logah-io', 0.0)) for m in (1.0, 0.25)}
    for init, lr, noise in want:
      for seed in (0, 1):
        got = [r for r in runs if (r['task'], r['target'], r['init'], r['seed']) ==
               (task, target, init, seed) and r['lr'] == pytest.approx(lr)]
        assert len(got) == 1, (task, init, lr, seed)
        assert got[0]['steps'] == [0, 5, 12] and got[0]['noise'] == noise
        assert got[0].get('scope', 'all') == ('io' if init.endswith('-io') else 'all')
        assert got[0].get('clone_factor', 0) == (2 if init.endswith('-clone') else 0)
        assert len(got[0]['loss']) == 3 and (task == 'gpt') != ('accuracy' in got[0])
    assert len([r for r in runs if r['task'] == task]) == 10 * 2
    # Spectra of each prediction; the speed-up entry of each LoGAH arm (full, clone, io) and seed.
    assert set(summary['spectra'][task][target]) == {'random', 'logah', 'ghn3', 'logah-clone'}
    assert len(summary['speedup'][task][target]) == 6
    assert all(len(v) == 2 for v in summary['speedup'][task][target].values())
    # The recipe records each task's GHN and meta-training settings.
    meta_rec = summary['recipe']['meta'][task]
    assert meta_rec['num_steps'] == cfg.pools[task].num_steps
    assert meta_rec['meta']['permute_channels'] == 0 and meta_rec['ghn']['rank'] == 4
    assert (summary['recipe']['clone_decoders'], summary['recipe']['clone_factor'],
            summary['recipe']['clone_snr_db']) == (['logah'], 2, cfg.clone_snr_db)
    # Every arm has a number in every column of the table.
    table = open(os.path.join(workdir, 'results.md')).read()
    section = table.split(f'**{task}**')[1].split('**')[0]
    rows = [l for l in section.splitlines() if l.startswith('| ') and ' lr ' in l]
    assert len(rows) == 10, section
    for line in rows:
      assert line.count('±') == 3 and '—' not in line, line
    png = os.path.join(workdir, f'logah_experiment_{task}_{target}.png')
    assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  on_disk = json.load(open(os.path.join(workdir, experiment.SUMMARY)))
  assert on_disk['runs'] == json.loads(json.dumps(runs))
  # The table is a function of the JSON alone.
  from hyperinit.studies import ghn_report  # pylint: disable=g-import-not-at-top
  assert ghn_report.table(on_disk) == open(os.path.join(workdir, 'results.md')).read()
  # Independent check of the fine-tuning harness (trainer eval vs meta.task_loss): the step-0
  # eval of the random init is the task loss of models.init_params(target, key(seed)).
  pool_cfg = cfg.pools['vit']
  name, target = next(iter(tasks.targets(pool_cfg).items()))
  params = models.init_params(target, jax.random.key(1))
  batches = tasks.eval_batches(pool_cfg)
  want = np.mean([float(meta.task_loss(target, params, tasks.meta_batch(b))[0]) for b in batches])
  got = next(r['loss'][0] for r in runs if (r['task'], r['target'], r['init'], r['seed'])
             == ('vit', name, 'random', 1))
  assert got == pytest.approx(want, rel=1e-4)
  # Each GHN was exported and predicts its target's exact tree.
  ghn_cfg, ghn_params = saving.load_ghn(os.path.join(workdir, 'vit', 'ghn3_s0', 'ghn'))
  assert ghn_cfg.decoder == 'ghn3'
  spec.check_tree(ghn_lib.predict(ghn_cfg, ghn_params, target), models.param_specs(target))
  # A rerun finds everything done and only rewrites the report.
  again = experiment.run(cfg, workdir)
  assert len(again['runs']) == len(runs)


def test_speedup_and_best_lr_closed_form():
  from hyperinit.studies import ghn_report  # pylint: disable=g-import-not-at-top
  run = {'steps': [0, 25, 100], 'loss': [5.0, 3.0, 2.0]}
  assert ghn_report.steps_to_reach(run, 4.0) == pytest.approx(12.5)   # halfway 0 -> 25
  assert ghn_report.steps_to_reach(run, 2.5) == pytest.approx(62.5)
  assert ghn_report.steps_to_reach(run, 6.0) == 0.0
  assert ghn_report.steps_to_reach(run, 1.0) is None
  mk = lambda lr, seed, final: {'task': 't', 'target': 'x', 'init': 'random', 'lr': lr,
                                'seed': seed, 'loss': [9.0, final]}
  runs = [mk(1e-3, 0, 3.0), mk(1e-3, 1, 3.4), mk(3e-4, 0, 3.1), mk(3e-4, 1, 3.2)]
  assert experiment.best_lr(runs, 't', 'x', [1e-3, 3e-4]) == 3e-4    # means 3.2 vs 3.15
  # Seed by seed against random init at its best LR (same seed): wins and differences.
  row = lambda init, seed, loss, acc, lr=3e-4: {
      'task': 't', 'target': 'x', 'init': init, 'lr': lr, 'lr_mult': 1.0, 'seed': seed,
      'steps': [0, 25], 'loss': loss, 'accuracy': acc}
  summary = {'best_random_lr': {'t': {'x': 3e-4}}, 'table_steps': [0, 25], 'runs': [
      row('random', 0, [2.3, 2.0], [0.1, 0.3]), row('random', 1, [2.3, 1.8], [0.1, 0.4]),
      row('random', 0, [2.3, 1.0], [0.1, 0.9], lr=1e-3),        # not the best LR: ignored
      row('logah', 0, [2.0, 1.9], [0.2, 0.3]), row('logah', 1, [2.1, 1.9], [0.2, 0.35])]}
  per = ghn_report.seedwise(summary, 't', 'x')['logah lr 0.0003']
  assert per[0]['wins'] == 2 and per[25]['wins'] == 1 and per[25]['seeds'] == 2
  assert per[25]['diffs'] == pytest.approx({0: -0.1, 1: 0.1})
  acc = ghn_report.seedwise(summary, 't', 'x', 'accuracy')['logah lr 0.0003']
  assert (acc[0]['wins'], acc[25]['wins']) == (2, 1)       # 0.3 >= 0.3 counts; 0.35 < 0.4


def test_noise_is_a_fraction_of_each_leaf_init_std():
  target = models.get_config('gpt2-tiny')
  zeros = jax.tree.map(np.zeros_like, models.init_params(target, jax.random.key(0)))
  noisy = spec.flatten(noise_lib.add_noise(zeros, target, 0.5, jax.random.key(3)))
  assert np.std(noisy['block_0/mlp/wi/kernel']) == pytest.approx(0.01, rel=0.05)   # 0.5 * 0.02
  assert np.std(noisy['block_0/mlp/wo/kernel']) == pytest.approx(0.005, rel=0.05)  # residual
  assert not np.any(noisy['block_0/mlp/wi/bias']) and not np.any(noisy['final_norm/scale'])
  assert noise_lib.add_noise(zeros, target, 0.0, jax.random.key(3)) is zeros


def test_meta_training_lowers_held_out_meta_loss(smoke_run):
  """LoGAH on the tiny GPT pool: eval loss of the predicted params on held-out text drops."""
  _, workdir, _ = smoke_run
  path = os.path.join(workdir, 'gpt', 'logah_s0', 'metrics.jsonl')
  evals = [r for r in map(json.loads, open(path)) if r['split'] == 'eval']
  first, last = evals[0], evals[-1]
  assert (first['step'], last['step']) == (0, 40)
  # A real fit on fixed eval batches, not noise (uniform over 256 bytes: 5.55 nats). Measured
  # 5.551 -> 5.413 on the pool and 5.557 -> 5.360 on the held-out target in these 40 steps.
  assert last['pool_loss'] < first['pool_loss'] - 0.1, (first, last)
  assert last['L2-D32-H2/loss'] < first['L2-D32-H2/loss'] - 0.1  # the held-out target too


def _state_leaves(result):
  s = result['state']
  return [np.asarray(x) for x in jax.tree.leaves((s['step'], s['params'], s['ema'],
                                                  s['opt_state']))]


def test_sigterm_then_resume_equals_uninterrupted(smoke_run, tmp_path, data_dir):
  del smoke_run  # only for its compiled programs
  cfg = _config('smoke', data_dir)
  cfg.eval_every = 0  # evaluate only at the end (step 40): not reached here
  straight = train.train_ghn(cfg, str(tmp_path / 'a'), stop_at=6)
  assert (straight['step'], straight['done'], straight['preempted']) == (6, False, False)

  def kill_at_3(step, metrics):
    del metrics
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  cut = train.train_ghn(cfg, str(tmp_path / 'b'), on_step=kill_at_3)
  assert (cut['step'], cut['preempted']) == (3, True)
  assert sorted(int(p) for p in os.listdir(tmp_path / 'b' / 'checkpoints') if p.isdigit()) == [3]
  resumed = train.train_ghn(cfg, str(tmp_path / 'b'), stop_at=6)
  assert resumed['step'] == 6
  a, b = _state_leaves(straight), _state_leaves(resumed)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)   # exact, as the trainer's resume
  # metrics.jsonl holds each step once.
  steps = [json.loads(l)['step'] for l in open(tmp_path / 'b' / 'metrics.jsonl')]
  assert len(steps) == len(set(steps))


def test_ema_warmup_closed_form(smoke_run, data_dir):
  del smoke_run
  cfg = _config('smoke', data_dir)
  ghn_cfg, meta_cfg = tasks.ghn_config(cfg), tasks.meta_config(cfg)
  assert meta_cfg.ema_warmup and meta_cfg.ema == 0.999
  _, groups = tasks.make_pool(cfg)
  state = meta.init_state(ghn_cfg, meta_cfg, jax.random.key(0))
  before = jax.tree.map(np.array, state['params'])
  loader = tasks.data_loader(cfg, 'train', train=True, seed=0, batch_size=cfg.data.batch_size)
  batch = tasks.meta_batch(next(iter(loader)))
  graphs = meta.batch_for(groups[0])
  for _ in range(2):
    state, _ = meta.meta_step(state, graphs, batch, ghn_cfg=ghn_cfg, meta_cfg=meta_cfg,
                              targets=groups[0])
    if int(state['step']) == 1:   # the trainer's schedule: lr 0 at update 0, params unchanged
      jax.tree.map(np.testing.assert_array_equal, state['params'], before)
  # update t = 2: decay min(0.999, (1 + t) / (10 + t)) of an EMA still at the initial params
  d = 3 / 12
  for e, p0, p2 in zip(jax.tree.leaves(state['ema']), jax.tree.leaves(before),
                       jax.tree.leaves(state['params'])):
    assert not np.array_equal(p0, p2) or not np.any(p0)
    np.testing.assert_allclose(e, d * p0 + (1 - d) * np.asarray(p2), rtol=1e-5, atol=1e-7)
