"""config.mup in the trainer (runs, checkpoints, init_from + muP, optimizer); sweeps: mup_sweep_test."""

import json
import math
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax
import numpy as np
import pytest

from configs import lm as lm_configs
from hyperinit import _checksums, checkpoint, models, mup
from hyperinit import spec as spec_lib
from hyperinit.train import mup as mup_train
from hyperinit.train import loop, metrics, optim


def lm_config(steps=8, lr=1e-2, **model):
  cfg = lm_configs.get_config('tiny')
  cfg.data.dataset = 'synthetic'
  cfg.data.seq_len, cfg.batch_size, cfg.num_train_steps = 32, 16, steps
  cfg.optimizer.learning_rate, cfg.optimizer.warmup_steps = lr, 2
  cfg.log_every, cfg.eval_every, cfg.eval_batches = 4, 0, 2
  cfg.checkpoint.every, cfg.checkpoint.async_save = 4, False
  for k, v in model.items():
    cfg.model[k] = v
  return cfg


def _logits(cfg, params, tokens):
  return np.asarray(models.apply_fn(cfg)(params, tokens))


def _tokens(n=2, t=16, seed=3):
  return jax.random.randint(jax.random.key(seed), (n, t), 0, 256)


# --- a muP run, its checkpoint, resuming ------------------------------------------------

def test_mup_run_trains_and_checkpoint_round_trips_multipliers(tmp_path):
  workdir = str(tmp_path / 'run')
  cfg = lm_config(embed_dim=128, mlp_dim=512, tie_embeddings=False)   # 4 heads: head_dim 32
  cfg.eval_every, cfg.eval_at_start = 8, True
  cfg.mup.enabled = True
  cfg.mup.base.embed_dim, cfg.mup.base.mlp_dim = 64, 256              # head_dim 16 at base
  out = loop.train_and_evaluate(cfg, workdir)
  rows = metrics.read_jsonl(workdir)
  evals = [r['loss'] for r in rows if r['split'] == 'eval']
  # zero-initialised readout: uniform logits at step 0, loss exactly ln(vocab)
  assert evals[0] == pytest.approx(math.log(256), abs=1e-5)
  assert evals[-1] < evals[0] - 0.3, evals           # it trains
  # the checkpoint's model computes with muP's forward multipliers ...
  params, saved_cfg = checkpoint.load_params(workdir)
  assert (saved_cfg.logits_mult, saved_cfg.attn_scale, saved_cfg.attn_mult) == (0.5, 'linear', 4.0)
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(out['state'].params))
  # ... and carries the multipliers (closed forms for width 128 against base 64)
  mults = mup_train.load_multipliers(workdir)
  assert dict(mults.axis_mults) == {'embed': 2.0, 'head_dim': 2.0, 'mlp': 2.0}
  want = {'block_0/mlp/wi/kernel': ('hidden', 2.0, 2.0),
          'block_1/attn/out/kernel': ('hidden', 2.0, 2.0),
          'token_embed/embedding': ('input', 1.0, 2.0), 'lm_head/kernel': ('output', 2.0, 1.0),
          'final_norm/scale': ('vector', 1.0, 2.0)}
  for path, (cls, fi, fo) in want.items():
    assert (mults[path].cls, mults[path].fan_in_mult, mults[path].fan_out_mult) == (cls, fi, fo)
  assert mults == mup.config_multipliers(saved_cfg, models.get_config(
      'gpt2-tiny', tie_embeddings=False))
  # resuming with the same config verifies the metadata (nothing left to train here)
  assert loop.train_and_evaluate(cfg, workdir)['step'] == 8
  # resuming under other muP settings, or without muP, is refused (nothing is overwritten)
  other = lm_config(steps=12, embed_dim=128, mlp_dim=512, tie_embeddings=False)
  other.mup.enabled = True
  other.mup.base.embed_dim, other.mup.base.mlp_dim = 64, 256
  other.mup.output_mult = 2.0
  with pytest.raises(checkpoint.CheckpointError, match='output_mult'):
    loop.train_and_evaluate(other, workdir)
  other.mup.output_mult, other.mup.enabled = None, False
  with pytest.raises(checkpoint.CheckpointError, match='trained with muP'):
    loop.train_and_evaluate(other, workdir)
  # multipliers edited on disk no longer match what the run derives: refused
  meta_file = os.path.join(workdir, 'checkpoints', '8', 'meta', 'metadata')
  meta = json.load(open(meta_file))
  meta['mup']['multipliers']['leaves']['block_0/mlp/wi/kernel'][1] = 4.0
  with open(meta_file, 'w') as f:
    json.dump(meta, f)
  # a deliberate edit, not corruption: re-sign the step (else it is set aside as broken)
  _checksums.write(os.path.dirname(os.path.dirname(meta_file)))
  other.mup.enabled = True
  with pytest.raises(checkpoint.CheckpointError, match=r'block_0/mlp/wi/kernel'):
    loop.train_and_evaluate(other, workdir)
  assert checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 read_only=True).all_steps() == [4, 8]


# --- init_from a HyperCloned model, continuing under muP with the source as base ---------

def _symmetric_clone(cfg, params, n=2):
  """numpy reference HyperCloning (METHODS.md section 1, symmetric): embed, mlp, heads x n.

  Every widened axis is tiled n times and divided by n where it is a fan-in
  axis; heads are duplicated as blocks (head_dim fixed).
  """
  specs = spec_lib.flatten(models.param_specs(cfg), is_leaf=spec_lib.is_spec)
  out = {}
  for path, x in spec_lib.flatten(jax.device_get(params)).items():
    s = specs[path]
    for ax, name in enumerate(s.axes):
      if name in ('embed', 'mlp', 'heads', 'kv_heads'):
        x = np.concatenate([x] * n, axis=ax) / (n if ax in s.fan_in else 1)
    if s.role == 'final_norm':     # tied readout: [h/n, ...] . [E, ...] = h . E
      x = x / n
    out[path] = x
  wide = cfg.replace(embed_dim=n * cfg.embed_dim, mlp_dim=n * cfg.mlp_dim,
                     num_heads=n * cfg.num_heads)
  return wide, spec_lib.unflatten(out)


def _perturbed(cfg, seed):
  """Random params with non-trivial norm gains and biases."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + 0.3 * rng.normal(size=x.shape).astype(np.float32),
                      jax.device_get(models.init_params(cfg, jax.random.key(seed))))


def test_init_from_clone_continues_under_mup_with_source_as_base(tmp_path):
  from hyperinit import interop  # pylint: disable=g-import-not-at-top
  src_cfg = models.get_config('gpt2-tiny')          # tied embeddings, 4 heads of 16
  src_params = _perturbed(src_cfg, 0)
  clone_cfg, clone_params = _symmetric_clone(src_cfg, src_params)
  toks = _tokens()
  want = _logits(src_cfg, src_params, toks)
  np.testing.assert_allclose(_logits(clone_cfg, clone_params, toks), want, rtol=2e-5, atol=2e-5)
  interop.save_hf(str(tmp_path / 'src'), src_cfg, jax.device_get(src_params))
  interop.save_hf(str(tmp_path / 'clone'), clone_cfg, clone_params)

  cfg = lm_config(steps=1, lr=0.0)
  cfg.optimizer.schedule, cfg.optimizer.warmup_steps = 'constant', 0
  cfg.model.name, cfg.init_from = 'init_from', str(tmp_path / 'clone')
  cfg.mup.enabled, cfg.mup.base.name = True, str(tmp_path / 'src')
  dst = str(tmp_path / 'dst')
  out = loop.train_and_evaluate(cfg, dst)
  run_params, run_cfg = checkpoint.load_params(dst)
  # muP against the source: logits x 1/2 (the tied table is 2x wider); 1/d attention = 1/sqrt(16)
  assert run_cfg.logits_mult == 0.5 and run_cfg.attn_scale == 'linear' and run_cfg.attn_mult == 4.0
  assert dict(mup_train.load_multipliers(dst).axis_mults) == {'embed': 2.0, 'heads': 2.0,
                                                               'kv_heads': 2.0, 'mlp': 2.0}
  # no muP init (the trained weights stay), the multiplier change folded into the final norm ...
  flat, flat_clone = spec_lib.flatten(jax.device_get(run_params)), spec_lib.flatten(clone_params)
  for path, x in flat.items():
    np.testing.assert_allclose(x, flat_clone[path] * (2.0 if path.startswith('final_norm') else 1),
                               rtol=1e-6, err_msg=path)
  # ... so the loaded model computes the source's function at step 0
  np.testing.assert_allclose(_logits(run_cfg, run_params, toks), want, rtol=2e-5, atol=2e-5)
  assert out['step'] == 1


@pytest.mark.parametrize('preset,tied', [('gpt2-tiny', True), ('llama-tiny', False)])
def test_fold_preserves_function_for_every_multiplier(preset, tied):
  """head_dim widening (attention scale), embed_mult, output_mult and depth_alpha all change.

  gpt2: LayerNorm, tied table (folded into the final norm); llama: RMSNorm, RoPE,
  gated MLP, untied readout (folded into lm_head).
  """
  old = models.get_config(preset, embed_dim=64, mlp_dim=128, tie_embeddings=tied, num_layers=2)
  base = old.replace(embed_dim=32, mlp_dim=64, num_layers=1)
  new = mup.mup_config(old, base, output_mult=3.0, embed_mult=2.0, depth_alpha=1.0)
  assert new.attn_scale == 'linear' and new.residual_mult == 0.5 and new.logits_mult == 1.5
  mults = mup.config_multipliers(new, base, depth_alpha=1.0)
  params = _perturbed(old, 1)
  folded = jax.jit(lambda p: mup_train.fold_multipliers(p, old, new, mults))(params)
  toks = _tokens()
  want = _logits(old, params, toks)
  assert np.abs(_logits(new, params, toks) - want).max() > 0.1   # the change is not a no-op
  # float32 rounding of factors like sqrt(2) and 2/3: measured 0.9e-6 (gpt2) and 2.7e-6 (llama)
  # of max|logit|; the bound is the clone tests' 1e-5.
  err = np.abs(_logits(new, folded, toks) - want).max()
  assert err <= 1e-5 * np.abs(want).max(), (err, np.abs(want).max())


def test_fold_errors_name_the_problem():
  old = models.get_config('olmo-tiny', embed_dim=128, mlp_dim=256)  # tied, no final-norm params
  base = old.replace(embed_dim=64, mlp_dim=128)
  new = mup.mup_config(old, base)
  with pytest.raises(mup_train.MupError, match='parameter-free final norm'):
    mup_train.fold_factors(mup.config_multipliers(new, base), old, new)
  with pytest.raises(mup_train.MupError, match='embed_dim'):
    mup_train.fold_factors(mup.config_multipliers(new, base), base, new)
  cfg = lm_config()
  cfg.mup.enabled, cfg.mup.base.name = True, 'no-such-model'
  with pytest.raises(mup_train.MupError, match='no-such-model'):
    mup_train.prepare(cfg, models.get_config('gpt2-tiny'))


# --- the optimizer ---------------------------------------------------------------------

def _updates(tx, params, grads):
  @jax.jit
  def two(params, grads):
    _, state = tx.update(grads, tx.init(params), params)   # the second update: moments are warm
    return tx.update(grads, state, params)[0]
  return spec_lib.flatten(jax.device_get(two(params, grads)))


@pytest.mark.parametrize('name', ['adamw', 'sgd'])
def test_optimizer_is_the_trainer_chain_with_mup_factors(name):
  base = models.get_config('gpt2-tiny', embed_dim=16, mlp_dim=32, num_heads=2, num_layers=1,
                           vocab_size=32, max_len=16, tie_embeddings=False)
  wide = base.replace(embed_dim=32, mlp_dim=64)
  opt = lm_config().optimizer
  opt.name, opt.weight_decay, opt.grad_clip_norm, opt.warmup_steps = name, 0.1, 0.0, 0
  for cfg in (base, wide):
    specs = models.param_specs(cfg)
    rng = np.random.default_rng(0)
    params, grads = (jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                                  models.param_shapes(cfg)) for _ in range(2))
    sp_tx = optim.from_config(opt, 10, specs)[0]
    sp = _updates(sp_tx, params, grads)
    if cfg is base:   # muP at base width: bit-identical to the trainer's (SP) optimizer
      m = mup.config_multipliers(base, base)
      got = _updates(optim.from_config(opt, 10, specs, m, wd_mode='fixed')[0], params, grads)
      for k in sp:
        np.testing.assert_array_equal(got[k], sp[k], err_msg=k)
      continue
    # width x2: the hidden update is the SP update with its optimizer part / 2 (Adam) or x1
    # (SGD: fan_out/fan_in); input-like and vector leaves x1 (Adam) or x2 (SGD).  With
    # wd_mode='fixed' the decay part D (SP's update at zero gradient: AdamW's decoupled decay,
    # SGD's coupled L2 through momentum) is the same at every width: got = s (sp - D) + D.
    mults = mup.config_multipliers(mup.mup_config(wide, base), base)
    got = _updates(optim.from_config(opt, 10, specs, mults, wd_mode='fixed',
                                     eps_mode='none')[0], params, grads)
    decay = _updates(sp_tx, params, jax.tree.map(np.zeros_like, grads))
    for k, want_sp in sp.items():
      s = mup.lr_multipliers(mults, 'adam' if name == 'adamw' else 'sgd')[k]
      cls = mults[k].cls
      assert s == {'adamw': {'hidden': 0.5}, 'sgd': {'input': 2.0, 'vector': 2.0,
                                                       'output': 2.0}}[name].get(cls, 1.0), k
      d = np.asarray(decay[k])
      assert np.any(d != 0) == k.endswith(('kernel', 'embedding')), k   # the decay mask
      np.testing.assert_allclose(got[k], (want_sp - d) * s + d, rtol=1e-5, atol=1e-8,
                                 err_msg=k)
