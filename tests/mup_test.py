"""muP: per-leaf multipliers, init, forward multipliers and optimizers vs closed forms and optax."""

import functools
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import flax
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
def _mlp(width, base=64, readout='base', seed=0):
  """MLP 48 -> width -> width -> 10 in muP (output_mult 1/m), params with nonzero biases."""
  mults = coord.mlp_multipliers(width, base)
  module = MLP((width, width), 10, 1.0 / mults.readout_width_mult)

  @jax.jit
  def init(key):
    params = spec.unbox(module.init(key, jnp.zeros((1, 48)))['params'])
    params = mup.rescale_init(params, mults, init_scheme='fan_in', readout=readout)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 * jax.random.normal(jax.random.key(7), x.shape)
        if spec.path_str(p).endswith('bias') else x, params)
  return module, init(jax.random.key(seed)), mults


def _batch(seed=1, n=16):
  kx, ky = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (n, 48)), jax.random.randint(ky, (n,), 0, 10)


@functools.lru_cache(maxsize=None)
def _grad_fn(module):
  def loss(p, batch):
    logits = module.apply({'params': p}, batch[0])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]))
  return jax.jit(jax.grad(loss))


def _grads(module, params, batch):
  return _grad_fn(module)(params, batch)


def _flat(tree):
  return {k: np.asarray(v) for k, v in spec.flatten(tree).items()}


# --- multipliers ---------------------------------------------------------------------

def test_mlp_multipliers_closed_form():
  m = coord.mlp_multipliers(256, 64)
  assert {p: v.cls for p, v in m.leaves.items()} == {
      'input/kernel': 'input', 'input/bias': 'vector', 'hidden_1/kernel': 'hidden',
      'hidden_1/bias': 'vector', 'readout/kernel': 'output', 'readout/bias': 'finite'}
  assert mup.factor_table(m, 'adam') == {
      'input/kernel': 1, 'input/bias': 1, 'hidden_1/kernel': 0.25, 'hidden_1/bias': 1,
      'readout/kernel': 1, 'readout/bias': 1}
  assert mup.factor_table(m, 'sgd') == {
      'input/kernel': 4, 'input/bias': 4, 'hidden_1/kernel': 1, 'hidden_1/bias': 4,
      'readout/kernel': 4, 'readout/bias': 1}
  assert m.readout_width_mult == 4.0


def test_mlp_readout_forward_multiplier():
  module, params, mults = _mlp(256)
  assert module.output_mult == 0.25
  x = np.asarray(_batch()[0], np.float64)
  p = {k: np.asarray(v, np.float64) for k, v in _flat(params).items()}
  h = np.maximum(x @ p['input/kernel'] + p['input/bias'], 0)
  h = np.maximum(h @ p['hidden_1/kernel'] + p['hidden_1/bias'], 0)
  want = 0.25 * (h @ p['readout/kernel']) + p['readout/bias']   # bias is not scaled
  got = jax.jit(module.apply)({'params': params}, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize('wd_mode', ['fixed', 'follows_lr'])
def test_one_adamw_step_closed_form(wd_mode):
  module, params, mults = _mlp(256)
  g = _grads(module, params, _batch())
  eps = float(np.median(np.abs(np.concatenate([v.ravel() for v in _flat(g).values()]))))
  lr, wd = 0.03, 0.2
  tx = mup.adamw(lr, eps=eps, weight_decay=wd, mults=mults, wd_mode=wd_mode)
  upd, _ = jax.jit(tx.update)(g, tx.init(params), params)
  # Closed form of the first AdamW step: m_hat = g, v_hat = g^2.
  s = {k: 0.25 if k == 'hidden_1/kernel' else 1.0 for k in MLP_LEAVES}        # LR factor
  e = {k: 1.0 if k == 'readout/bias' else 0.25 for k in MLP_LEAVES}           # eps factor
  gp, pp, up = _flat(g), _flat(params), _flat(upd)
  for k in MLP_LEAVES:
    u = gp[k] / (np.abs(gp[k]) + eps * e[k])
    want = (-lr * (s[k] * u + wd * pp[k]) if wd_mode == 'fixed'
            else -lr * s[k] * (u + wd * pp[k]))
    np.testing.assert_allclose(up[k], want, rtol=1e-5, atol=1e-8, err_msg=k)


@pytest.mark.parametrize('wd_mode', ['fixed', 'follows_lr'])
def test_one_sgd_step_closed_form(wd_mode):
  module, params, mults = _mlp(256)
  g = _grads(module, params, _batch())
  lr, wd = 0.1, 0.01
  tx = mup.sgd(lr, momentum=0.9, mults=mults, l2_coupled=wd, wd_mode=wd_mode)
  upd, _ = jax.jit(tx.update)(g, tx.init(params), params)
  s = {'input/kernel': 4, 'input/bias': 4, 'hidden_1/kernel': 1, 'hidden_1/bias': 4,
       'readout/kernel': 4, 'readout/bias': 1}
  gp, pp, up = _flat(g), _flat(params), _flat(upd)
  for k in MLP_LEAVES:   # first step: momentum trace = g + L2 term
    want = (-lr * (s[k] * gp[k] + wd * pp[k]) if wd_mode == 'fixed'     # lr * wd at any width
            else -lr * s[k] * (gp[k] + wd * pp[k]))
    np.testing.assert_allclose(up[k], want, rtol=1e-5, atol=1e-9, err_msg=k)


def _run(tx, params, grads_seq):
  state, outs = tx.init(params), []
  for g in grads_seq:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    outs.append(u)
  return outs


def test_base_width_is_bitwise_plain_optax():
  _, params, m64 = _mlp(64)
  assert set(mup.factor_table(m64).values()) == {1.0}
  assert m64.leaves['readout/kernel'].cls == 'output'      # classes survive at base width
  grads = [jax.tree.map(lambda x, i=i: jax.random.normal(jax.random.key(i), x.shape), params)
           for i in range(2)]
  sched = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
  pairs = [
      (mup.adamw(sched, weight_decay=0.1, mults=m64), optax.adamw(sched, weight_decay=0.1)),
      (mup.adamw(1e-3, weight_decay=0.1, mults=m64, wd_mode='follows_lr'),
       optax.adamw(1e-3, weight_decay=0.1)),
      (mup.sgd(0.1, momentum=0.9, mults=m64, l2_coupled=0.01),       # coupled L2, as torch's SGD
       optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.1, momentum=0.9))),
      (mup.adam(1e-3, mults=m64, l2_coupled=0.01, wd_mode='follows_lr'),
       optax.chain(optax.add_decayed_weights(0.01), optax.adam(1e-3))),
      (mup.adam(1e-3, nesterov=True, mults=m64), optax.adam(1e-3, nesterov=True)),
      (mup.adam(1e-3, 0.8, 0.99, 1e-6, mults=m64), optax.adam(1e-3, 0.8, 0.99, 1e-6)),
      (mup.lion(1e-3, mults=m64), optax.lion(1e-3)),
      (mup.sgd(0.1, 0.9, mults=m64), optax.sgd(0.1, 0.9)),
      (mup.adafactor(1e-2, 32, weight_decay_rate=0.01, mults=m64),
       optax.adafactor(1e-2, min_dim_size_to_factor=32, weight_decay_rate=0.01)),
      (mup.make_optimizer('adamw', sched, m64, grad_clip=1.0, weight_decay=0.1),
       optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.1))),
      (mup.make_optimizer('adamw', sched, None, grad_clip=1.0, weight_decay=0.1),
       optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.1))),
  ]
  # All chains compiled in one program (compiling 16 small ones costs more than running them).
  outs = jax.jit(lambda p, gs: [(_run(o, p, gs), _run(r, p, gs)) for o, r in pairs])(params, grads)
  for i, (ours, ref) in enumerate(outs):
    for a, b in zip(ours, ref):
      for k, v in _flat(a).items():
        np.testing.assert_array_equal(v, _flat(b)[k], err_msg=f'pair {i} leaf {k}')


def test_other_optimizers_scale_optax_per_leaf():
  """Lion, Adafactor (relative step) and Adam without eps scaling: update = factor x optax's."""
  _, params, m = _mlp(256)
  grads = [jax.tree.map(lambda x: 1e-3 * jax.random.normal(jax.random.key(0), x.shape), params)]
  adam_s = mup.factor_table(m, 'adam')
  rel_s = mup.factor_table(m, 'adafactor_relative')
  assert rel_s['hidden_1/kernel'] == 0.5 and rel_s['input/kernel'] == 1.0
  cases = [(mup.lion(1e-3, weight_decay=0.0, mults=m), optax.lion(1e-3, weight_decay=0.0), adam_s),
           (mup.adam(1e-3, mults=m, eps_mode='none'), optax.adam(1e-3), adam_s),
           (mup.adafactor(1e-2, min_dim_size_to_factor=32, mults=m),
            optax.adafactor(1e-2, min_dim_size_to_factor=32), rel_s),
           (mup.adafactor(1e-2, multiply_by_parameter_scale=False, mults=m),
            optax.adafactor(1e-2, multiply_by_parameter_scale=False), adam_s)]
  # First step (Adafactor's relative step reads the params), all cases in one program.
  outs = jax.jit(lambda p, g: [(_run(o, p, [g])[0], _run(r, p, [g])[0]) for o, r, _ in cases])(
      params, grads[0])
  for (a, b), (_, _, s) in zip(outs, cases):
    for k, v in _flat(a).items():
      np.testing.assert_allclose(v, s[k] * _flat(b)[k], rtol=1e-6, atol=1e-12, err_msg=k)


def test_gradient_scale_matches_eps_rule():
  """Under muP every gradient with an infinite dim shrinks like 1/m (so eps/m for all of them)."""
  rms = {}
  for w in (256, 1024):
    module, params, mults = _mlp(w)
    g = _flat(_grads(module, params, _batch(n=64)))
    rms[w] = {k: float(np.sqrt(np.mean(v ** 2))) for k, v in g.items()}
    eps = mup.eps_multipliers(mults, 'all')
    rms[w]['eps'] = eps
  for k in MLP_LEAVES:
    want = rms[1024]['eps'][k] / rms[256]['eps'][k]    # 1/4 for width leaves, 1 for finite
    got = rms[1024][k] / rms[256][k]
    # measured: 0.79-1.03 x want for the width leaves, 0.86 for the finite readout bias
    assert 0.7 * want < got < 1.4 * want, (k, got, want)


# --- our Transformer presets ------------------------------------------------------

def _expected_class(path):
  leaf = '/'.join(path.split('/')[-2:])
  if leaf in ('token_embed/embedding', 'pos_embed/embedding', 'patch_embed/kernel'):
    return 'input'
  if leaf in ('lm_head/kernel', 'head/kernel'):
    return 'output'
  if leaf == 'head/bias':
    return 'finite'
  if leaf.endswith('kernel'):
    return 'hidden'
  return 'vector'         # biases, norm scales, cls_token


@pytest.mark.parametrize('name', ['gpt2-tiny', 'llama-tiny', 'pythia-tiny', 'olmo-tiny',
                                  'llama-gqa-tiny', 'vit-tiny'])
@pytest.mark.parametrize('scan', [False, True])
def test_transformer_leaf_classes(name, scan):
  base = models.get_config(name, scan_layers=scan)
  tgt = base.replace(embed_dim=256, mlp_dim=4 * base.mlp_dim)   # head_dim 16 -> 64
  m = mup.config_multipliers(tgt, base)
  assert m.axis_mults['embed'] == 4.0 and m.axis_mults['head_dim'] == 4.0
  for path, v in m.leaves.items():
    assert v.cls == _expected_class(path), (path, v)
    assert v.in_block == (path.startswith('block_') or path.startswith('blocks/')), path
  adam, sgd = mup.factor_table(m, 'adam'), mup.factor_table(m, 'sgd')
  for path, v in m.leaves.items():
    want_adam = 0.25 if v.cls == 'hidden' else 1.0
    assert adam[path] == want_adam, path
    want_sgd = {'input': 4.0, 'vector': 4.0, 'output': 4.0, 'finite': 1.0}.get(v.cls)
    want_sgd = v.fan_out_mult / v.fan_in_mult if v.cls == 'hidden' else want_sgd
    assert sgd[path] == want_sgd, path
  wi = m.leaves['blocks/mlp/wi/kernel' if scan else 'block_0/mlp/wi/kernel']
  assert (wi.fan_in_mult, wi.fan_out_mult) == (4.0, 4.0)   # embed x4 -> mlp x4
  assert m.readout_width_mult == 4.0
  if scan:
    assert m.leaves['blocks/attn/query/kernel'].role == 'query'


def test_tied_embedding_follows_table8():
  """A tied embedding is input-like: Table 8 gives the input and the output use the same init
  (width-independent) and LR (Adam x1, SGD x m), so the tie is consistent; the output's 1/m
  goes in the forward pass (logits_mult), and a zero readout init never zeroes the tie."""
  base = models.get_config('gpt2-tiny')
  tied = mup.mup_config(base.replace(embed_dim=256, mlp_dim=1024), base)
  untied_base = models.get_config('gpt2-tiny', tie_embeddings=False)
  untied = mup.mup_config(untied_base.replace(embed_dim=256, mlp_dim=1024), untied_base)
  mt, mu = mup.config_multipliers(tied, base), mup.config_multipliers(untied, untied_base)
  assert mt.leaves['token_embed/embedding'].cls == 'input'
  assert mt.leaves['token_embed/embedding'].role == 'tied_embedding'
  assert 'output' not in mup.class_counts(mt)
  for rule in ('adam', 'sgd'):
    lt, lu = mup.factor_table(mt, rule), mup.factor_table(mu, rule)
    assert lt['token_embed/embedding'] == lu['lm_head/kernel'] == lu['token_embed/embedding']
  assert tied.logits_mult == untied.logits_mult == 0.25
  pt = mup.init_params(tied, jax.random.key(0), mt, readout='zero')
  assert abs(float(jnp.std(pt['token_embed']['embedding'])) - 0.02) < 1e-3   # not zeroed
  assert mup.init_factors(mu, init_scheme='normal', readout='zero')['lm_head/kernel'] == 0.0
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 256)
  logits, acts = jax.jit(lambda p, t: coord.apply_with_acts(models.build(tied), p, t))(pt, tokens)
  h, emb = np.asarray(acts['final_norm'], np.float64), np.asarray(pt['token_embed']['embedding'])
  np.testing.assert_allclose(logits, 0.25 * h @ emb.T, rtol=1e-5, atol=1e-6)


def test_mqa_kv_projection_is_a_bottleneck():
  """Heads grow (head_dim fixed) while MQA keeps one kv head: k/v kernels have an infinite
  fan-in and a finite fan-out but are not the readout.  Treating them as output-like (Adam x1,
  as a one-infinite-dim rule would) lets k = W x grow like m; hidden-style x1/m keeps it
  Theta(1)."""
  base = models.get_config('llama-mqa-tiny')
  tgt = base.replace(embed_dim=256, num_heads=16, head_dim=16, mlp_dim=4 * base.mlp_dim)
  m = mup.config_multipliers(tgt, base.replace(head_dim=16))
  k = m.leaves['block_0/attn/key/kernel']
  assert (k.cls, k.fan_in_mult, k.fan_out_mult) == ('bottleneck', 4.0, 1.0)
  assert m.leaves['block_0/attn/query/kernel'].cls == 'hidden'
  assert mup.factor_table(m, 'adam')['block_0/attn/key/kernel'] == 0.25
  assert mup.factor_table(m, 'sgd')['block_0/attn/key/kernel'] == 1.0
  assert mup.init_factors(m, init_scheme='normal')['block_0/attn/key/kernel'] == 0.5


def test_mup_at_base_width_is_standard_parametrisation():
  base = models.get_config('llama-gqa-tiny', num_layers=1)
  cfg = mup.mup_config(base, base)
  assert cfg.attn_scale == 'linear' and cfg.attn_mult == 4.0 and cfg.logits_mult == 1.0
  m = mup.config_multipliers(cfg, base)            # default delta decides the width axes
  assert set(m.axis_mults.values()) == {1.0} and 'embed' in m.axis_mults
  key = jax.random.key(3)
  p_sp = models.init_params(base, key)
  p_mup = mup.init_params(cfg, key, m, readout='keep')
  jax.tree.map(np.testing.assert_array_equal, p_sp, p_mup)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, base.vocab_size)
  np.testing.assert_allclose(models.apply_fn(cfg)(p_mup, tokens),
                             models.apply_fn(base)(p_sp, tokens), rtol=1e-6, atol=1e-6)


def test_init_rescaling():
  base = models.get_config('llama-tiny')
  cfg = mup.mup_config(base.replace(embed_dim=256, mlp_dim=4 * base.mlp_dim), base)
  m = mup.config_multipliers(cfg, base)
  f = mup.init_factors(m, init_scheme='normal', readout='zero', zero_query=True)
  assert f['block_0/mlp/wi/kernel'] == 0.5 and f['token_embed/embedding'] == 1.0
  assert f['lm_head/kernel'] == 0.0 and f['block_0/attn/query/kernel'] == 0.0
  g = mup.init_factors(m, init_scheme='fan_in', readout='base')
  assert g['block_0/mlp/wi/kernel'] == 1.0 and g['lm_head/kernel'] == 2.0
  h = mup.init_factors(m, init_scheme='fan_in', readout='base',
                       scheme_overrides={'token_embed/embedding': 'fan_out'})   # Flax nn.Embed
  assert h['token_embed/embedding'] == 2.0
  p = mup.init_params(cfg, jax.random.key(0), m, zero_query=True)
  std = lambda x: float(jnp.std(x))
  assert abs(std(p['block_0']['mlp']['wi']['kernel']) / 0.01 - 1) < 0.03     # 0.02 / sqrt(4)
  assert abs(std(p['token_embed']['embedding']) / 0.02 - 1) < 0.03
  assert not np.any(np.asarray(p['lm_head']['kernel']))
  assert not np.any(np.asarray(p['block_1']['attn']['query']['kernel']))


def test_depth_transfer_rules():
  base = models.get_config('gpt2-tiny')                       # L = 2, width 64
  for alpha in (1.0, 0.5):
    for scan in (False, True):
      tgt = base.replace(num_layers=8, embed_dim=128, mlp_dim=512, scan_layers=scan)
      cfg = mup.mup_config(tgt, base, depth_alpha=alpha)
      assert cfg.residual_mult == pytest.approx(4.0 ** -alpha)
      assert cfg.scale_residual_init is False
      m = mup.config_multipliers(cfg, base, depth_alpha=alpha)
      assert m.depth_mult == 4.0 and m.depth_alpha == alpha
      adam, sgd = mup.factor_table(m, 'adam'), mup.factor_table(m, 'sgd')
      eps = mup.eps_multipliers(m, 'all')
      blk = 'blocks/' if scan else 'block_3/'
      d_adam, d_sgd, d_eps = 4.0 ** (alpha - 1), 4.0 ** (2 * alpha - 1), 4.0 ** -alpha
      assert adam[blk + 'mlp/wi/kernel'] == pytest.approx(0.5 * d_adam)
      assert adam[blk + 'attn_norm/scale'] == pytest.approx(d_adam)
      assert sgd[blk + 'mlp/wo/kernel'] == pytest.approx(d_sgd)
      assert sgd[blk + 'attn/query/bias'] == pytest.approx(2.0 * d_sgd)
      assert eps[blk + 'mlp/wo/kernel'] == pytest.approx(0.5 * d_eps)
      assert adam['token_embed/embedding'] == 1.0 and eps['final_norm/scale'] == 0.5
  with pytest.raises(ValueError, match='depth_alpha'):
    mup.config_multipliers(base.replace(num_layers=4), base, depth_alpha=2.0)


# --- serialisation, errors, sharding -------------------------------------------------

def test_multipliers_json_round_trip_and_restored_trees():
  base = models.get_config('pythia-tiny', scan_layers=True)
  m = mup.config_multipliers(base.replace(embed_dim=128, mlp_dim=512, num_layers=4), base,
                             depth_alpha=1.0)
  back = mup.Multipliers.from_json(m.to_json())
  assert back == m
  assert mup.factor_table(back, 'sgd') == mup.factor_table(m, 'sgd')
  # A tree that went through FrozenDict (e.g. an old Flax checkpoint) keeps its paths.
  _, params, mm = _mlp(256)
  assert spec.unflatten(mup.factor_table(mm))['hidden_1']['kernel'] == 0.25   # for logging
  assert mm.tree(params)['readout']['kernel'].cls == 'output'
  tx = mup.scale_per_leaf(mup.factor_table(mm))
  a, _ = tx.update(params, tx.init(params))
  b, _ = tx.update(flax.core.freeze(params), tx.init(params))
  jax.tree.map(np.testing.assert_array_equal, a, flax.core.unfreeze(b))


def test_errors_name_the_problem():
  _, params, mm = _mlp(256)
  other = {'input': params['input'], 'extra': {'kernel': jnp.ones(3)}}
  tx = mup.scale_per_leaf(mup.factor_table(mm))
  with pytest.raises(KeyError, match='extra/kernel'):
    tx.update(other, tx.init(other))
  base = models.get_config('gpt2-tiny')
  s, p = models.param_specs(base), models.param_shapes(base)
  with pytest.raises(ValueError, match='no logical axis differs'):
    mup.width_multipliers(s, p, base_specs=s, base_shapes=p)
  vit = models.get_config('vit-tiny')
  with pytest.raises(ValueError, match='does not occur in the base'):
    mup.width_multipliers(models.param_specs(vit), models.param_shapes(vit), base_specs=s,
                          base_shapes=p)
  with pytest.raises(ValueError, match='wd_mode'):
    mup.adamw(1e-3, mults=mm, wd_mode='coupled')
  with pytest.raises(ValueError, match='optimizer kind'):
    mup.make_optimizer('rmsprop', 1e-3, mm)
  with pytest.raises(ValueError, match='readout'):
    mup.init_factors(mm, init_scheme='normal', readout='small')


def test_fsdp_sharded_update_matches_unsharded():
  devices = jax.devices()
  assert len(devices) >= 8, 'needs --xla_force_host_platform_device_count=8'
  mesh = jax.sharding.Mesh(np.array(devices[:8]), ('fsdp',),
                           axis_types=(jax.sharding.AxisType.Auto,))
  _, params, m = _mlp(256)
  grads = jax.tree.map(lambda x: 1e-3 * jax.random.normal(jax.random.key(1), x.shape), params)
  tx = mup.make_optimizer('adamw', 1e-2, m, grad_clip=1.0, weight_decay=0.1)
  state = tx.init(params)

  def fsdp(x):    # shard the first dim divisible by 8 along 'fsdp', replicate the rest
    dims = [None] * np.ndim(x)
    for i, n in enumerate(np.shape(x)):
      if n % 8 == 0:
        dims[i] = 'fsdp'
        break
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*dims))

  def step(p, g, s):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  ref_p, _ = jax.jit(step)(params, grads, state)
  ps, ss = jax.tree.map(fsdp, params), jax.tree.map(fsdp, state)
  with jax.set_mesh(mesh):
    sharded = jax.jit(step, in_shardings=(ps, ps, ss), out_shardings=(ps, ss))
    new_p, _ = sharded(jax.device_put(params, ps), jax.device_put(grads, ps),
                       jax.device_put(state, ss))
  w = new_p['hidden_1']['kernel']
  assert w.sharding == ps['hidden_1']['kernel'] and len(w.addressable_shards) == 8
  assert w.addressable_shards[0].data.shape == (32, 256)
  for k, v in _flat(new_p).items():
    np.testing.assert_allclose(v, _flat(ref_p)[k], rtol=1e-6, atol=1e-7, err_msg=k)
