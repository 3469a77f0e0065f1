"""LoGAH decoders: the low-rank layout, the spectrum of predicted matrices, normalisation."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperinit import models, spec
from hyperinit.logah import batching, decoders, ghn as ghn_lib, meta, samplers, spectrum
from hyperinit.logah.graph import build_graph

# A small GHN for everything that really runs (compiles in seconds on CPU).
SMALL = ghn_lib.GHNConfig(hidden=16, layers=1, heads=2, rank=4, max_dim=512, chunk=16)


@pytest.fixture(scope='module')
def small_params():
  return ghn_lib.init(SMALL, jax.random.key(0))


def test_low_rank_factorisation_is_the_reference_reshape(small_params):
  """F = relu(S) W_K + b_K [2r, K], reshaped row-major to [2K, r]: A = rows [0, K),
  Bt = rows [K, 2K); W = Bt[:c_in] A[:c_out]^T (numpy), for a factor within one row of F
  (24 * r <= K), one spanning rows (200 * r > K) and one wrapping past K rows."""
  r, k = SMALL.rank, SMALL.max_dim
  dec = decoders.LowRankDecoder(SMALL.hidden, r, k)
  p = small_params['decoder']
  e = jax.random.normal(jax.random.key(1), (SMALL.hidden,))
  codes = dec.apply({'params': p}, e, method=dec.codes)
  s = np.maximum(np.asarray(codes['s']).reshape(2 * r, r), 0)
  f = s @ np.asarray(p['expand_kernel']) + np.asarray(p['expand_bias'])   # [2r, K]
  a, bt = np.split(f.reshape(2 * k, r), 2)                                  # [K, r] each
  for c_in, c_out in ((40, 24), (24, 200)):
    w = np.asarray(dec.apply({'params': p}, codes, c_in, c_out, method=dec.matrix))
    np.testing.assert_allclose(w, bt[:c_in] @ a[:c_out].T, rtol=1e-4, atol=1e-6)
  # Past K rows the factor wraps around.
  wide = np.asarray(dec.apply({'params': p}, codes, 3, k + 5, method=dec.matrix))
  np.testing.assert_allclose(wide[:, k:], wide[:, :5], rtol=1e-6)
  # Factor-side moments equal the matrix's own (what the LoGAH normalisation uses).
  bt_, a_ = dec.apply({'params': p}, codes, 40, 200, method=dec.factors)
  mean, var = decoders.factor_moments(bt_, a_)
  w = np.asarray(bt_ @ a_.T, np.float64)
  np.testing.assert_allclose([mean, var], [w.mean(), w.var()], rtol=1e-3)



def test_vector_head_is_a_mix_of_w_k_rows_with_no_shared_offset(small_params):
  """LoGAH's 1-D head: v = a @ W_K[:, :n] (no b_K, no relu), so vectors of different nodes
  share no offset; at GHN init (small last layer) gains are ~1 and biases ~0, as at random init.
  (With b_K every predicted bias was the same vector, std 0.13 after meta-training.)"""
  dec = decoders.LowRankDecoder(SMALL.hidden, SMALL.rank, SMALL.max_dim)
  p = small_params['decoder']
  e = jax.random.normal(jax.random.key(1), (2, SMALL.hidden))
  codes = dec.apply({'params': p}, e, method=dec.codes)
  v = np.asarray(dec.apply({'params': p}, codes, 1, 40, method=dec.vector))
  want = np.asarray(codes['a'][:, 1]) @ np.asarray(p['expand_kernel'])[:, :40]
  np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-7)
  # A zero code gives a zero vector: nothing is shared by construction.
  zero = jax.tree.map(jnp.zeros_like, codes)
  assert not np.any(np.asarray(dec.apply({'params': p}, zero, 1, 40, method=dec.vector)))
  out = spec.flatten(ghn_lib.predict(SMALL, small_params, models.get_config('gpt2-tiny')))
  for path, x in out.items():
    if path.endswith('scale'):
      assert np.abs(np.asarray(x) - 1).max() < 0.1, path
    elif path.endswith('bias'):
      assert np.abs(np.asarray(x)).max() < 0.1, path

def test_spectrum_closed_form():
  # Singular values (3, 2, 1): energies 9, 4, 1 -> top-1 share 9/14, effective rank 14^2/98 = 2.
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(40, 3)))
  v, _ = np.linalg.qr(rng.normal(size=(30, 3)))
  w = u @ np.diag([3.0, 2.0, 1.0]) @ v.T
  top1, erank = spectrum.matrix_spectrum(w)
  assert top1 == pytest.approx(9 / 14) and erank == pytest.approx(2.0)
  assert spectrum.matrix_spectrum(np.outer(np.arange(1, 6), np.ones(7))) == pytest.approx((1, 1))
  assert spectrum.matrix_spectrum(np.eye(8))[1] == pytest.approx(8)
  # Tree version: the min_dim filter and one matrix per layer of a scanned leaf.
  target = models.get_config('gpt2-tiny', scan_layers=True)
  params = models.init_params(target, jax.random.key(0))
  specs = models.param_specs(target)
  names = set(spectrum.leaf_matrices(params, specs))
  assert {'blocks/mlp/wi/kernel[0]', 'blocks/mlp/wi/kernel[1]', 'token_embed/embedding'} <= names
  assert not set(spectrum.leaf_matrices(params, specs, min_dim=65))   # the widest side is 256,
  st = spectrum.spectrum_stats(params, specs, min_dim=64)             # the narrowest 64
  assert st['num_leaves'] == len(names) and 0 < st['top1_share'] < 0.2  # random init: generic


def _spectra(cfg, params, target):
  return spectrum.spectrum_stats(ghn_lib.predict(cfg, params, target), models.param_specs(target),
                                 min_dim=2 * cfg.rank)


def test_predicted_matrices_are_generic_rank_r_at_init_and_after_meta_training():
  """Mean top-1 energy share <= 0.3 and mean effective rank >= r/4 over the predicted kernels
  with both sides >= 2r, for a fresh GHN and after 20 meta-steps (fixed seed and batch).
  Measured: at init 0.20 / 8.8 (r = 16); the old S-rows-as-factor-columns layout gave 0.82 / 1.2."""
  cfg = ghn_lib.GHNConfig(hidden=16, layers=1, heads=2, rank=16, max_dim=1024)
  spec_ = dataclasses.replace(samplers.POOLS['gpt-cpu'], max_len=16, tie_embeddings=False)
  group = (samplers.build_config(spec_, 2, 64, 4),)
  held_out = samplers.build_config(spec_, 3, 96, 4)
  # A learnable batch: a fixed random first-order Markov chain over the 256 bytes.
  rng = np.random.default_rng(0)
  nxt = rng.integers(0, 256, (256, 4))
  tok = [rng.integers(0, 256, 8)]
  for _ in range(16):
    tok.append(nxt[tok[-1], rng.integers(0, 4, 8)])
  batch = {'tokens': jnp.asarray(np.stack(tok, 1), jnp.int32)}
  mc = meta.MetaConfig(lr=3e-3, warmup_steps=2, total_steps=20, ema=0.0)
  state = meta.init_state(cfg, mc, jax.random.key(0))
  before = _spectra(cfg, state['params'], held_out)
  graphs = meta.batch_for(group)
  losses = []
  for _ in range(20):
    state, m = meta.meta_step(state, graphs, batch, ghn_cfg=cfg, meta_cfg=mc, targets=group)
    losses.append(float(m['task_loss']))
  after = _spectra(cfg, state['params'], held_out)
  assert losses[-1] < losses[0] - 0.3, losses          # it did train
  for st in (before, after):
    assert st['num_leaves'] >= 3 * 6, st['num_leaves']
    assert st['top1_share'] <= 0.3 and st['effective_rank'] >= cfg.rank / 4, (before, after)


def test_predicted_kernels_have_rank_at_most_r(small_params):
  target = models.get_config('gpt2-tiny')
  params = ghn_lib.predict(SMALL, small_params, target)
  specs = spec.flatten(models.param_specs(target), is_leaf=spec.is_spec)
  checked = 0
  for path, w in spec.flatten(params).items():
    s = specs[path]
    if s.fan_in:
      w2 = np.asarray(w).reshape(s.size_of(w.shape, s.fan_in), -1)
      assert min(w2.shape) > SMALL.rank
      sv = np.linalg.svd(w2.astype(np.float64), compute_uv=False)
      assert np.sum(sv > 1e-5 * sv[0]) <= SMALL.rank, path
      checked += 1
  assert checked == 1 + 1 + 2 * 6
  # Jitted, decode_params decodes leaves in shape groups; predict, leaf by leaf: same numbers.
  grouped = jax.jit(lambda p: ghn_lib.decode_params(
      SMALL, p, ghn_lib.target_codes(SMALL, p, target), target))(small_params)
  for a, b in zip(jax.tree.leaves(grouped), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_tiled_decoder_repeats_its_chunk():
  dec = decoders.TiledDecoder(hidden=8, chunk=16)
  e = jax.random.normal(jax.random.key(1), (8,))
  p = dec.init(jax.random.key(0), e)
  codes = dec.apply(p, e, method=dec.codes)
  w = np.asarray(dec.apply(p, codes, 64, 40, method=dec.matrix))            # 4 x 2.5 chunks
  np.testing.assert_array_equal(w[:16, :16], w[16:32, 16:32])
  np.testing.assert_array_equal(w[48:64, 32:40], w[:16, :8])
  v = np.asarray(dec.apply(p, codes, 1, 40, method=dec.vector))
  np.testing.assert_array_equal(v[:16], v[16:32])
  # Its decoder size grows like chunk^2: last layer 8 * hidden * chunk^2 weights.
  assert p['params']['mlp']['fc2']['kernel'].shape == (8 * 8, 16 * 16)


def _norm_and_raw(params, target, cfg=SMALL):
  """(path -> (normalised leaf, raw leaf)) decoded from the same node codes of `target`."""
  codes = jax.tree.map(lambda c: c[0], ghn_lib.node_codes(cfg, params,
                                                          batching.batch_graphs([build_graph(target)])))
  plans = {p.path: p for p in ghn_lib.leaf_plans(cfg, target)}

  def pair(path):
    plan = plans[path]
    node = jax.tree.map(lambda c: c[plan.nodes[0]], codes)
    norm = ghn_lib.decode_leaf(cfg, params, node, plan.decode)
    raw = ghn_lib.decode_leaf(cfg, params, node, dataclasses.replace(plan.decode, mode='none'))
    return np.asarray(norm), np.asarray(raw)
  return pair, plans


def test_init_std_matches_the_models_own_init():
  """models.init_std (what mode 'init' normalises to) against the empirical std of
  models.init_params: GPT-2's 0.02 / sqrt(2L) on residual outputs, ViT's 0.02, fan_in init."""
  for name, over in (('gpt2-tiny', {}), ('vit-tiny', {}), ('gpt2-tiny', {'init': 'fan_in'})):
    target = models.get_config(name, **over)
    params = spec.flatten(models.init_params(target, jax.random.key(0)))
    shapes = spec.flatten(models.param_shapes(target))
    for path, s in spec.flatten(models.param_specs(target), is_leaf=spec.is_spec).items():
      if s.fan_in or s.role == 'cls_token':
        want = models.init_std(target, path, s, shapes[path].shape)
        tol = 0.3 if params[path].size < 100 else 0.08
        assert np.std(params[path]) == pytest.approx(want, rel=tol), (name, over, path)
  gpt = models.get_config('gpt2-tiny')
  s = spec.flatten(models.param_specs(gpt), is_leaf=spec.is_spec)['block_0/mlp/wo/kernel']
  assert models.init_std(gpt, 'block_0/mlp/wo/kernel', s, (256, 64)) == pytest.approx(0.01)


def test_normalisations_closed_form(small_params):
  """Mode 'init' (the default, GPT and ViT): every matrix at its own init std times the
  node's predicted gain (1 at GHN init); gain = 2 sigmoid(raw / 2), bias = tanh(raw / 5), with raw
  decoded from the same node codes without normalisation."""
  for name in ('gpt2-tiny', 'vit-tiny'):
    target = models.get_config(name)
    out = spec.flatten(ghn_lib.predict(SMALL, small_params, target))
    specs = spec.flatten(models.param_specs(target), is_leaf=spec.is_spec)
    for path, w in out.items():
      if specs[path].fan_in:
        want = models.init_std(target, path, specs[path], w.shape)
        assert np.asarray(w).std() == pytest.approx(want, rel=1e-3), (name, path)
    pair, plans = _norm_and_raw(small_params, target)
    assert plans['block_0/mlp/wi/kernel'].decode.mode == 'init'
    norm, raw = pair('block_0/mlp/wi/kernel')
    np.testing.assert_allclose(norm, raw * 0.02 / raw.std(), rtol=1e-3)
    norm, raw = pair('block_1/attn_norm/scale')
    np.testing.assert_allclose(norm, 2 / (1 + np.exp(-raw / 2)), rtol=1e-5)
    norm, raw = pair('block_0/mlp/wo/bias')
    np.testing.assert_allclose(norm, np.tanh(raw / 5), rtol=1e-5, atol=1e-7)
  norm, raw = pair('cls_token')
  np.testing.assert_allclose(norm, raw * 0.02 / raw.std(), rtol=1e-3)
  # GPT-2's residual outputs: 0.02 / sqrt(2 L) = 0.01 at L = 2.
  pair, plans = _norm_and_raw(small_params, models.get_config('gpt2-tiny'))
  norm, raw = pair('block_1/attn/out/kernel')
  np.testing.assert_allclose(norm, raw * 0.01 / raw.std(), rtol=1e-3)
  # The predicted gain: a log-gain head output of log 3 on every node -> every matrix and
  # table at 3x its init std (0.06, residual outputs 0.03); bounded at e^3 for large outputs.
  p3 = dict(small_params, log_gain={'kernel': small_params['log_gain']['kernel'],
                                    'bias': jnp.array([3 * math.atanh(math.log(3.0) / 3)])})
  pair, _ = _norm_and_raw(p3, models.get_config('gpt2-tiny'))
  for path, want in (('pos_embed/embedding', 0.06), ('token_embed/embedding', 0.06),
                     ('block_0/mlp/wi/kernel', 0.06), ('block_1/attn/out/kernel', 0.03)):
    assert pair(path)[0].std() == pytest.approx(want, rel=1e-3), path
  p_big = dict(small_params, log_gain={'kernel': small_params['log_gain']['kernel'],
                                       'bias': jnp.array([1e3])})
  pair, _ = _norm_and_raw(p_big, models.get_config('gpt2-tiny'))
  assert pair('block_0/mlp/wi/kernel')[0].std() == pytest.approx(0.02 * math.exp(3), rel=1e-3)
  # Mode 'fan_in' (GHN-3's vision rule): kernel = raw * sqrt(beta / fan_in), beta = 2; tables
  # are left raw whatever else the mode does (as the reference leaves positional encodings).
  fan = SMALL.replace(normalize='fan_in')
  pair, plans = _norm_and_raw(small_params, models.get_config('vit-tiny'), fan)
  norm, raw = pair('patch_embed/kernel')
  np.testing.assert_allclose(norm, raw * math.sqrt(2 / (4 * 4 * 3)), rtol=1e-4, atol=1e-8)
  norm, raw = pair('block_0/mlp/wo/kernel')
  np.testing.assert_allclose(norm, raw * math.sqrt(2 / 128), rtol=1e-4, atol=1e-8)
  norm, raw = pair('pos_embed/embedding')
  np.testing.assert_array_equal(norm, raw)
  norm, raw = pair('head/bias')
  np.testing.assert_allclose(norm, np.tanh(raw / 5), rtol=1e-5, atol=1e-7)
  # Mode 'std' (the reference's GPT rule): every 2-D leaf, residual outputs and tables too, at 0.02.
  pair, _ = _norm_and_raw(small_params, models.get_config('gpt2-tiny'), SMALL.replace(normalize='std'))
  for path in ('block_1/attn/out/kernel', 'token_embed/embedding', 'pos_embed/embedding'):
    norm, raw = pair(path)
    # atol: float32 entries near zero (abs error ~1e-9).
    np.testing.assert_allclose(norm, raw * 0.02 / raw.std(), rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize('decoder', ['logah', 'ghn3'])
def test_predicted_scale_does_not_depend_on_the_raw_decoder_scale(decoder):
  """Mode 'init': multiplying the decoder's raw matrix output by 10 (LoGAH: W_K and b_K, so
  both factors; GHN-3: its last layer) leaves every predicted matrix unchanged."""
  cfg = SMALL.replace(decoder=decoder)
  params = ghn_lib.init(cfg, jax.random.key(0))
  loud = jax.tree.map(lambda x: x, params)
  if decoder == 'logah':
    loud['decoder'] = dict(params['decoder'], expand_kernel=params['decoder']['expand_kernel'] * 10,
                           expand_bias=params['decoder']['expand_bias'] * 10)
  else:
    fc2 = params['decoder']['mlp']['fc2']
    loud['decoder'] = dict(params['decoder'], mlp=dict(params['decoder']['mlp'],
                                                       fc2={k: v * 10 for k, v in fc2.items()}))
  for name in ('gpt2-tiny', 'vit-tiny'):
    target = models.get_config(name)
    a, b = (spec.flatten(ghn_lib.predict(cfg, p, target)) for p in (params, loud))
    specs = spec.flatten(models.param_specs(target), is_leaf=spec.is_spec)
    for path in a:
      if specs[path].fan_in:
        np.testing.assert_allclose(a[path], b[path], rtol=2e-3, atol=1e-6, err_msg=path)


@pytest.mark.parametrize('name', ['llama-gqa-tiny', 'vit-tiny'])
def test_predicted_params_run_in_the_model(small_params, name):
  target = models.get_config(name)
  params = ghn_lib.predict(SMALL, small_params, target)
  spec.check_tree(params, models.param_specs(target))
  x = models.dummy_input(target, 2)
  out = models.apply_fn(target)(params, x)
  assert bool(jnp.all(jnp.isfinite(out)))
  # An init-like model, as random init is: logits of a comparable scale (measured 4.0x
  # random init's std for llama, 0.45x for the ViT) and near-uniform predictions (mean
  # -log p within 0.2 nats of log V; an unnormalised prediction gives 0.007x the std).
  ref = models.apply_fn(target)(models.init_params(target, jax.random.key(1)), x)
  assert 0.2 < float(out.std() / ref.std()) < 5.0
  nll = -float(jax.nn.log_softmax(out).mean())
  assert abs(nll - math.log(out.shape[-1])) < 0.5


def test_default_ghn_parameter_count():
  # README / docs/logah.md: the default LoGAH (hidden 64, 3 layers, r 32, K 32768) has 2.47M (<= 2.5M)
  # parameters, and covers GPT-2 Large; counted from shapes (nothing allocated).
  cfg = ghn_lib.GHNConfig()
  shapes = jax.eval_shape(lambda: ghn_lib.init(cfg, jax.random.key(0)))
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == 2_468_201  # incl. the 65-param gain head


