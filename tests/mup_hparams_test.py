"""muP weight decay vs microsoft/mup, and the base hyper-parameters (`mup.BaseHParams`)."""

import functools
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyperinit import models, mup, spec
from hyperinit.mup import coord
from hyperinit.mup.mlp import MLP

MLP_LEAVES = ('input/kernel', 'input/bias', 'hidden_1/kernel', 'hidden_1/bias', 'readout/kernel',
              'readout/bias')


@functools.lru_cache(maxsize=None)
def _mlp(width, base=64):
  """MLP 48 -> width -> width -> 10 in muP (output_mult 1/m, readout at the base's init)."""
  mults = coord.mlp_multipliers(width, base)
  module = MLP((width, width), 10, 1.0 / mults.readout_width_mult)
  params = spec.unbox(module.init(jax.random.key(0), jnp.zeros((1, 48)))['params'])
  return module, mup.rescale_init(params, mults, init_scheme='fan_in', readout='base'), mults


def _flat(tree):
  return {k: np.asarray(v) for k, v in spec.flatten(tree).items()}


# --- weight decay: the docs/mup.md table ------------------------------------------------

def _torch_reference(kind, params, grads_seq, lr, wd, s, decoupled_wd, momentum=0.9,
                     b1=0.9, b2=0.999, eps=1e-8):
  """numpy transcription of microsoft/mup's MuSGD / MuAdam / MuAdamW on torch's SGD / Adam /
  AdamW (mup/optim.py and torch.optim's update formulas): one param group per leaf with
  lr_g = lr * s and, unless decoupled_wd, weight_decay_g = wd / s."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  state = {k: [np.zeros_like(v), np.zeros_like(v)] for k, v in p.items()}
  out = []
  for t, g in enumerate(grads_seq, 1):
    new = {}
    for k, x in p.items():
      lr_g, wd_g = lr * s[k], (wd if decoupled_wd else wd / s[k])
      d = np.asarray(g[k], np.float64)
      if kind in ('sgd', 'adam'):
        d = d + wd_g * x                              # torch SGD / Adam: coupled
      if kind == 'sgd':
        buf = d if t == 1 else momentum * state[k][0] + d
        state[k][0] = buf
        new[k] = x - lr_g * buf
        continue
      if kind == 'adamw':
        x = x * (1 - lr_g * wd_g)                      # torch AdamW: decoupled, times lr
      m = state[k][0] = b1 * state[k][0] + (1 - b1) * d
      v = state[k][1] = b2 * state[k][1] + (1 - b2) * d * d
      mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
      new[k] = x - lr_g * mh / (np.sqrt(vh) + eps)
    out.append({k: new[k] - p[k] for k in p})
    p = new
  return out


@pytest.mark.parametrize('kind', ['sgd', 'adam', 'adamw'])
@pytest.mark.parametrize('wd_mode', ['fixed', 'follows_lr'])
def test_weight_decay_matches_microsoft_mup(kind, wd_mode):
  """Three steps of make_optimizer(kind, wd_mode=...) equal microsoft/mup's MuSGD / MuAdam /
  MuAdamW with decoupled_wd = (wd_mode == 'follows_lr') on torch's optimizers (the docs/mup.md
  table), for every leaf of a width-256 muP MLP (base 64)."""
  _, params, mults = _mlp(256)
  rule = 'sgd' if kind == 'sgd' else 'adam'
  s = mup.factor_table(mults, rule)
  assert sorted(set(s.values())) == ([1.0, 4.0] if kind == 'sgd' else [0.25, 1.0])
  lr, wd = (0.05, 0.3) if kind == 'sgd' else (3e-3, 0.5)
  kw = dict(momentum=0.9) if kind == 'sgd' else dict(eps_mode='none')   # microsoft/mup: no eps rule
  tx = mup.make_optimizer(kind, lr, mults, weight_decay=wd, wd_mode=wd_mode, **kw)
  rng = np.random.default_rng(0)
  flat = _flat(params)
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) * 1e-2 for k, v in flat.items()}
           for _ in range(3)]
  state, p, ours = tx.init(params), params, []
  for g in grads:
    u, state = tx.update(spec.unflatten(g), state, p)
    p = optax.apply_updates(p, u)
    ours.append(_flat(u))
  want = _torch_reference(kind, flat, grads, lr, wd, s, decoupled_wd=wd_mode == 'follows_lr')
  for t, (a, b) in enumerate(zip(ours, want)):
    for k in MLP_LEAVES:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-7, err_msg=f'step {t} {k}')


# --- base hyper-parameters -------------------------------------------------------------

def test_sp_equals_mup_with_sp_equivalent_base_hps():
  """SP at width 4 x base with LR lr is muP at that width with `sp_equivalent(4)` base HPs and
  LR 4 lr: the same logits at init and after three Adam steps (the reference is plain SP:
  models.init_params + optax.adam, no muP code)."""
  base = models.get_config('gpt2-tiny', embed_dim=16, mlp_dim=64, num_heads=2, num_layers=1,
                           vocab_size=32, max_len=16, tie_embeddings=False)
  target = base.replace(embed_dim=64, mlp_dim=256)            # head_dim 8 -> 32
  hps = mup.BaseHParams.sp_equivalent(4.0, base.d_head)
  assert (hps.hidden_init_mult, hps.readout_init_mult, hps.input_lr_mult) == (2.0, 4.0, 0.25)
  cfg = mup.mup_config(target, base, **hps.forward_kwargs())
  mults = mup.config_multipliers(cfg, base)
  key, lr = jax.random.key(0), 1e-2
  p_sp = models.init_params(target, key)
  p_mup = mup.init_params(cfg, key, mults, readout='base', **hps.init_kwargs())
  # eps ~ 0: muP's readout gradient is 1/m of SP's, so a finite eps is the one difference
  # (measured with eps=1e-8: 4e-5 of logits ~2; with 1e-12: 3e-7)
  tx_sp = optax.adam(lr, eps=1e-12)
  tx_mup = mup.make_optimizer('adam', 4 * lr, mults, eps=1e-12, eps_mode='none',
                              lr_factors=hps.lr_factors(mults))
  toks = jax.random.randint(jax.random.key(1), (4, 16), 0, 32)

  def train(c, p, tx):
    f = jax.jit(models.apply_fn(c))
    loss = lambda q: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        f(q, toks[:, :-1]), toks[:, 1:]))

    @jax.jit
    def step(p, state):
      u, state = tx.update(jax.grad(loss)(p), state, p)
      return optax.apply_updates(p, u), state
    state, logits = tx.init(p), [f(p, toks)]
    for _ in range(3):
      p, state = step(p, state)
      logits.append(f(p, toks))
    return logits
  a, b = train(target, p_sp, tx_sp), train(cfg, p_mup, tx_mup)
  assert float(jnp.abs(a[-1] - a[0]).max()) > 0.05                # the steps moved the logits
  for t, (x, y) in enumerate(zip(a, b)):
    np.testing.assert_allclose(y, x, rtol=0, atol=3e-6, err_msg=f'after {t} steps')
  # with default base HPs the same muP model differs from SP (that is what the HPs absorb)
  c0 = mup.mup_config(target, base)
  p0 = mup.init_params(c0, key, mup.config_multipliers(c0, base), readout='base')
  assert float(jnp.abs(models.apply_fn(c0)(p0, toks) - a[0]).max()) > 1e-3


def test_base_hps_go_to_init_forward_and_class_lrs():
  base = models.get_config('vit-tiny')
  cfg = base.replace(embed_dim=4 * base.embed_dim, mlp_dim=4 * base.mlp_dim)
  hps = mup.BaseHParams(output_mult=2.0, hidden_init_mult=3.0, readout_init_mult=0.5,
                        input_lr_mult=0.1, hidden_lr_mult=0.2, output_lr_mult=0.3,
                        vector_lr_mult=0.4)
  assert mup.BaseHParams.from_json(hps.to_json()) == hps
  cfg = mup.mup_config(cfg, base, **hps.forward_kwargs())
  assert cfg.logits_mult == 0.5                                  # output_mult / m
  m = mup.config_multipliers(cfg, base)
  # the readout bias is not annotated 'readout': it is a vector-like (finite) leaf
  s = spec.flatten(models.param_specs(cfg), is_leaf=spec.is_spec)
  assert s['head/kernel'].role == 'readout' and s['head/bias'].role == ''
  assert m['head/bias'].cls == 'finite'
  lr = hps.lr_factors(m)
  want = {'input': 0.1, 'hidden': 0.2, 'output': 0.3, 'vector': 0.4, 'finite': 0.4}
  assert all(lr[p] == want[v.cls] for p, v in m.leaves.items())
  f = mup.init_factors(m, init_scheme='normal', readout='base', **hps.init_kwargs())
  assert f['block_0/mlp/wi/kernel'] == pytest.approx(3.0 / 2) and f['head/kernel'] == 0.5
  assert f['patch_embed/kernel'] == 1.0 and f['head/bias'] == 1.0
  zero = mup.init_factors(m, init_scheme='normal', readout='zero', **hps.init_kwargs())
  assert zero['head/kernel'] == 0.0
  # the LR multipliers multiply muP's own through lr_factors
  tx = mup.make_optimizer('adamw', 1.0, m, lr_factors=lr, weight_decay=None, eps_mode='none')
  shapes = models.param_shapes(cfg)
  g = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), shapes)
  u = _flat(jax.jit(lambda g: tx.update(g, tx.init(g), g)[0])(g))
  assert u['block_0/mlp/wi/kernel'].flat[0] == pytest.approx(-0.2 / 4, rel=1e-5)
  assert u['head/bias'].flat[0] == pytest.approx(-0.4, rel=1e-5)
  for bad in ({'hidden_init_mult': 0.0}, {'output_mult': -1.0}):
    with pytest.raises(ValueError, match=next(iter(bad))):
      mup.BaseHParams(**bad)
  with pytest.raises(ValueError, match='lr_mult_hidden'):
    mup.BaseHParams.from_dict({'lr_mult_hidden': 2.0})
