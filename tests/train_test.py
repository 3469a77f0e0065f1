"""Optimizers, train step, the training loop (LM and images), metrics, guards, init_from."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import glob
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lm as lm_configs
from configs import vit as vit_configs
import train_testing
from hyperinit import checkpoint, models
from hyperinit.train import loop, metrics, optim, step as step_lib, synthetic, tasks


def lm_config(steps=8, **kw):
  return train_testing.tiny_lm_config(steps, **{
      'batch_size': 16, 'log_every': 4, 'eval_every': 4, 'eval_batches': 2,
      'checkpoint.every': 4, 'checkpoint.async_save': False, **kw})


# --- optimizer ------------------------------------------------------------------

def _opt(**kw):
  o = lm_configs.get_config('tiny').optimizer
  o.update(kw)
  return o


def test_adamw_chain_matches_optax_adamw():
  cfg = models.get_config('gpt2-tiny', num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32,
                          vocab_size=32, max_len=16)
  specs = models.param_specs(cfg)
  params = models.init_params(cfg, jax.random.key(0))
  opt = _opt(name='adamw', learning_rate=1e-2, weight_decay=0.1, warmup_steps=3,
             schedule='cosine', grad_clip_norm=0.5, min_lr_ratio=0.1)
  tx, schedule = optim.from_config(opt, 10, specs)
  # GPT-2 convention, by name: decay kernels and embeddings, not biases or norm gains
  mask = jax.tree_util.tree_map_with_path(
      lambda path, _: str(path[-1].key) in ('kernel', 'embedding'), params)
  ref = optax.chain(optax.clip_by_global_norm(0.5),
                    optax.adamw(optax.warmup_cosine_decay_schedule(0, 1e-2, 3, 10, 1e-3),
                                b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=mask))

  def update(tx):
    @jax.jit
    def f(g, state, p):
      u, state = tx.update(g, state, p)
      return optax.apply_updates(p, u), state
    return f

  f1, f2 = update(tx), update(ref)
  p1, p2, s1, s2 = params, params, tx.init(params), ref.init(params)
  rng = np.random.default_rng(0)
  for _ in range(3):
    g = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    p1, s1 = f1(g, s1, p1)
    p2, s2 = f2(g, s2, p2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p1, p2)
  assert math.isclose(float(schedule(3)), 1e-2, rel_tol=1e-6)


def test_schedules_closed_form():
  peak, w, total, r = 1.0, 10, 110, 0.1
  cos, _ = optim.from_config(_opt(learning_rate=peak, warmup_steps=w, min_lr_ratio=r), total)
  del cos
  sched = optim.make_schedule(_opt(learning_rate=peak, warmup_steps=w, min_lr_ratio=r), total)
  lin = optim.make_schedule(_opt(learning_rate=peak, warmup_steps=w, min_lr_ratio=r,
                                 schedule='linear'), total)
  const = optim.make_schedule(_opt(learning_rate=peak, warmup_steps=w, schedule='constant'), total)
  for t in (0, 5, 10, 60, 110):
    warm = peak * t / w
    frac = (t - w) / (total - w)
    want_cos = warm if t < w else r + (1 - r) * 0.5 * (1 + math.cos(math.pi * frac))
    want_lin = warm if t < w else 1 - (1 - r) * frac
    assert math.isclose(float(sched(t)), want_cos, abs_tol=1e-6), t
    assert math.isclose(float(lin(t)), want_lin, abs_tol=1e-6), t
    assert math.isclose(float(const(t)), min(warm, peak), abs_tol=1e-6), t
  with pytest.raises(ValueError, match='schedule'):
    optim.make_schedule(_opt(schedule='step'), 10)
  with pytest.raises(ValueError, match='optimizer.name'):
    optim.from_config(_opt(name='adagrad'), 10)


def test_decay_mask_reads_the_annotations():
  mask = optim.decay_mask(models.param_specs(models.get_config('vit-tiny')))
  assert mask['block_0']['mlp']['wi']['kernel'] and mask['patch_embed']['kernel']
  assert mask['pos_embed']['embedding']
  assert not mask['block_0']['mlp']['wi']['bias'] and not mask['final_norm']['scale']
  assert not mask['cls_token']


def test_sgd_and_lr_multipliers():
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones((2,))}
  g = {'w': jnp.full((2, 2), 2.0), 'b': jnp.full((2,), 2.0)}
  opt = _opt(name='sgd', momentum=0.0, learning_rate=0.1, warmup_steps=0, schedule='constant',
             grad_clip_norm=0.0, weight_decay=0.0)
  tx, _ = optim.from_config(opt, 10, lr_factors={'w': 0.5, 'b': 1.0})
  u, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_allclose(u['w'], -0.1 * 0.5 * 2.0)
  np.testing.assert_allclose(u['b'], -0.1 * 2.0)


# --- train step -------------------------------------------------------------------

def test_grad_accumulation_equals_one_big_batch():
  rng = np.random.default_rng(0)
  batches = [{k: rng.integers(0, 256, (16, 32)).astype(np.int32) for k in ('inputs', 'targets')}
             for _ in range(2)]
  fsdp = {'mesh.data': 1, 'mesh.fsdp': -1}
  s1, s2 = (loop.setup(lm_config(grad_accum_steps=k, **fsdp)) for k in (1, 2))
  state = step_lib.init_state(lambda key: models.init_params(s1.task.model_cfg, key), s1.tx,
                              jax.random.key(0), s1.shardings)
  states = [state, jax.tree.map(jnp.copy, state)]  # steps donate their input
  losses = [[], []]
  for b in batches:
    gb = loop.global_batch(b, s1.batch_shardings, s1.task.batch_shapes(16))
    for i, s in enumerate((s1, s2)):
      states[i], m = s.train_step(states[i], gb)
      losses[i].append(float(m['loss']))
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               jax.device_get(states[1].params), jax.device_get(states[0].params))
  with pytest.raises(ValueError, match='grad_accum_steps'):
    loop.setup(lm_config(grad_accum_steps=3))


def test_global_batch_rejects_wrong_shapes():
  s = loop.setup(lm_config())
  bad = {'inputs': np.zeros((16, 31), np.int32), 'targets': np.zeros((16, 31), np.int32)}
  with pytest.raises(ValueError, match=r"'inputs' has shape \(16, 31\); expected \(16, 32\)"):
    loop.global_batch(bad, s.batch_shardings, s.task.batch_shapes(16))
  with pytest.raises(KeyError, match='needs'):
    loop.global_batch({'tokens': bad['inputs']}, s.batch_shardings, s.task.batch_shapes(16))


# --- the loop ---------------------------------------------------------------------

@pytest.fixture(scope='module')
def lm_run(tmp_path_factory):
  """12 steps of gpt2-tiny on synthetic data: (workdir, config, result)."""
  workdir = str(tmp_path_factory.mktemp('lm'))
  config = lm_config(steps=12, **{'optimizer.learning_rate': 1e-2})
  return workdir, config, loop.train_and_evaluate(config, workdir)


def test_train_and_evaluate_lm(lm_run):
  workdir, config, out = lm_run
  assert out['step'] == 12 and not out['preempted']
  rows = metrics.read_jsonl(workdir)
  train = [r for r in rows if r['split'] == 'train']
  evals = [r for r in rows if r['split'] == 'eval']
  assert [r['step'] for r in train] == [4, 8, 12] and [r['step'] for r in evals] == [4, 8, 12]
  assert {'loss', 'grad_norm', 'learning_rate', 'steps_per_sec', 'tokens_per_sec'} <= set(train[0])
  assert train[-1]['loss'] < train[0]['loss'] < math.log(256) + 0.2
  assert math.isclose(evals[-1]['perplexity'], math.exp(evals[-1]['loss']), rel_tol=1e-5)
  assert glob.glob(os.path.join(workdir, 'tb', 'events.out.tfevents.*'))
  # the checkpoint carries the model config: the model can be rebuilt from it alone
  params, cfg = checkpoint.load_params(workdir)
  assert cfg == models.get_config('gpt2-tiny')
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(out['state'].params))
  # rerunning the same command resumes (and has nothing left to do)
  again = loop.train_and_evaluate(config, workdir)
  assert again['step'] == 12
  assert len(metrics.read_jsonl(workdir)) == len(rows)


def test_train_and_evaluate_classification(tmp_path):
  cfg = vit_configs.get_config('tiny')
  cfg.data.dataset = 'synthetic'
  cfg.model.image_size, cfg.model.num_channels, cfg.model.num_classes = 8, 1, 10
  cfg.batch_size, cfg.num_train_steps = 32, 30
  cfg.optimizer.warmup_steps, cfg.optimizer.learning_rate = 3, 1e-2
  cfg.log_every, cfg.eval_every, cfg.eval_batches = 10, 30, 4
  cfg.mesh.data, cfg.mesh.fsdp = 1, -1
  out = loop.train_and_evaluate(cfg, str(tmp_path))
  assert out['eval']['accuracy'] > 0.4, out['eval']  # chance is 0.1
  rows = [r for r in metrics.read_jsonl(str(tmp_path)) if r['split'] == 'train']
  assert 'examples_per_sec' in rows[0] and 'accuracy' in rows[0]


class _NaNAfter:
  """Synthetic images whose pixels turn NaN from record index `start` on (shuffle off)."""

  def __init__(self, src, start):
    self.src, self.start = src, start

  def __len__(self):
    return len(self.src)

  def __repr__(self):
    return f'NaNAfter({self.src!r}, {self.start})'

  def __getitem__(self, i):
    r = self.src[i]
    if i >= self.start:
      r = dict(r, image=np.full_like(r['image'], np.nan))
    return r


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  cfg = vit_configs.get_config('tiny')
  cfg.data.dataset = 'synthetic'
  cfg.model.image_size, cfg.model.num_channels, cfg.model.num_classes = 8, 1, 10
  cfg.batch_size, cfg.num_train_steps = 8, 20
  cfg.optimizer.warmup_steps = 1
  cfg.log_every, cfg.eval_every, cfg.checkpoint.every = 5, 0, 3
  src = synthetic.ImageSource(1000, (8, 8, 1), 10)
  loader = synthetic.make_loader(_NaNAfter(src, 7 * 8), 8, shuffle=False)  # step 8 is NaN
  with pytest.raises(FloatingPointError, match=r'between steps 7 and 9.*Newest good checkpoint: '
                     r'step 6 .*finite when saved; checksums verified.*rerun to resume'):
    loop.train_and_evaluate(cfg, str(tmp_path), train_loader=loader)
  # resumed at 6, it fails again before any save: rerunning unchanged would loop, and it says so
  with pytest.raises(FloatingPointError, match=r'step 6 .*the step this run started from, so '
                     r'rerunning unchanged repeats.*restore_step=3 \(saved: \[3\]\)'):
    loop.train_and_evaluate(cfg, str(tmp_path), train_loader=loader)
  ck = checkpoint.Checkpointer(os.path.join(tmp_path, 'checkpoints'), read_only=True)
  assert ck.all_steps() == [3, 6]
  params, _ = checkpoint.load_params(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_init_from_checkpoint_and_runtime_overrides(lm_run, tmp_path):
  src, _, a = lm_run
  cfg = lm_config(steps=2, **{'optimizer.learning_rate': 0.0, 'optimizer.schedule': 'constant',
                              'optimizer.warmup_steps': 0, 'mesh.data': 1, 'mesh.fsdp': -1})
  cfg.init_from = src
  cfg.model.name = 'init_from'      # take the architecture from the checkpoint
  cfg.model.dtype = 'bfloat16'      # runtime fields still apply
  b = loop.train_and_evaluate(cfg, str(tmp_path / 'dst'))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(b['state'].params),
               jax.device_get(a['state'].params))
  assert b['state'].params['block_0']['mlp']['wi']['kernel'].sharding.spec[0] == 'fsdp'
  meta = checkpoint.Checkpointer(str(tmp_path / 'dst' / 'checkpoints'), read_only=True).meta()
  assert meta['model_config']['dtype'] == 'bfloat16' and meta['model_config']['embed_dim'] == 64
  # a Hugging Face directory (hyperinit.interop) works the same way
  from hyperinit import interop  # pylint: disable=g-import-not-at-top
  interop.save_hf(str(tmp_path / 'hf'), models.get_config('gpt2-tiny'),
                  jax.device_get(a['state'].params))
  cfg.init_from = str(tmp_path / 'hf')
  h = loop.train_and_evaluate(cfg, str(tmp_path / 'dst_hf'))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(h['state'].params),
               jax.device_get(a['state'].params))
  bad = lm_config(steps=4)
  bad.init_from = str(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError, match='nope'):
    loop.train_and_evaluate(bad, str(tmp_path / 'dst2'))
  wrong = lm_config(steps=4, **{'model.embed_dim': 32, 'model.num_heads': 2})
  wrong.init_from = src
  with pytest.raises(ValueError, match=r"param 'block_0/.*' has shape"):
    loop.train_and_evaluate(wrong, str(tmp_path / 'dst3'))


def test_bf16_compute_option():
  rng = np.random.default_rng(0)
  b = {k: rng.integers(0, 256, (4, 32)).astype(np.int32) for k in ('inputs', 'targets')}
  one = jax.devices()[:1]
  s32 = loop.setup(lm_config(), devices=one)
  s16 = loop.setup(lm_config(**{'model.dtype': 'bfloat16'}), devices=one)
  assert s16.task.model_cfg.dtype == 'bfloat16' and s16.task.model_cfg.param_dtype == 'float32'
  params = models.init_params(s32.task.model_cfg, jax.random.key(0))
  l32 = float(jax.jit(s32.task.loss_fn)(params, b, None)[0])
  l16 = float(jax.jit(s16.task.loss_fn)(params, b, None)[0])
  assert l16 != l32 and abs(l16 - l32) < 0.02 * l32


def test_flops_per_token_gpt2():
  # 6N + 12 L T D with N = 124.4M params minus the 1024 x 768 position table.
  cfg = models.get_config('gpt2')
  n = 124_439_808 - 1024 * 768
  assert tasks.flops_per_token(cfg, 1024) == 6 * n + 12 * 12 * 1024 * 768
