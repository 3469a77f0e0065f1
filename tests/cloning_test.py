"""HyperCloning: function preservation for every family, leaf rules vs NumPy, noise, errors.

The reference for function preservation is the SOURCE model's logits (an
independent forward pass of the narrow model); leaf constructions are checked
against block matrices written out with NumPy.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperinit import cloning, models, spec
from hyperinit.spec import ParamSpec

TINY = ['gpt2-tiny', 'opt-tiny', 'pythia-tiny', 'llama-tiny', 'llama-gqa-tiny', 'llama-mqa-tiny',
        'olmo-tiny', 'vit-tiny']
VARIANTS = cloning.VARIANTS
RTOL = 1e-5   # fp32: |clone - source| <= RTOL * (|source| + max |source|)
# bf16, max |clone - source| / max |logit|: noisy clones <= 2.5% (measured <= 1.8%, 8 presets);
# noise-free clones are exact (the copies' sums round the same way) except where measured
# otherwise: MQA under bf16 compute (0.26%, its one kv head is shared, not copied) and the ViT
# with bf16 params (0.48%).
BF16_NOISY_TOL = 0.025
BF16_EXACT_EXCEPT = {('compute', 'llama-mqa-tiny'): 0.01, ('params', 'vit-tiny'): 0.01}


@functools.lru_cache(maxsize=None)
def _forward(cfg):
  return models.apply_fn(cfg)


def _inputs(cfg, seed=2):
  if isinstance(cfg, models.ViTConfig):
    shape = (2, cfg.image_size, cfg.image_size, cfg.num_channels)
    return jax.random.normal(jax.random.key(seed), shape)
  return jax.random.randint(jax.random.key(seed), (2, 12), 0, cfg.vocab_size)


def _params(cfg, seed=0):
  """Random params, host-side (no compile): N(0, 0.1) weights, gains 1 + N(0, 0.1), biases
  N(0, 0.1), so every leaf matters."""
  rng = np.random.default_rng(seed)
  def one(path, shape):
    x = 0.1 * rng.standard_normal(shape.shape, np.float32)
    return jnp.asarray(x + 1.0 if spec.path_str(path).endswith('scale') else x, shape.dtype)
  return jax.tree_util.tree_map_with_path(one, models.param_shapes(cfg))


def _assert_close(out, ref, tol, what):
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  assert out.shape == ref.shape, what
  scale = np.abs(ref).max()
  err = np.abs(out - ref).max()
  assert err <= tol * scale, f'{what}: max |diff| {err:.3g} > {tol} * max |ref| {scale:.3g}'


# name, config overrides, factors, clone options
FAMILY_CASES = [(n, {}, cloning.factors_for(2, att), {'tie': 'untie'} if n == 'olmo-tiny' else {})
                for n in TINY for att in ('heads', 'head_dim')]
EXTRA_CASES = [
    # scanned layers ('layers' axis never widened)
    ('gpt2-tiny', {'scan_layers': True}, cloning.factors_for(2), {}),
    ('pythia-tiny', {'scan_layers': True}, cloning.factors_for(2, 'head_dim'), {}),
    ('llama-gqa-tiny', {'scan_layers': True}, cloning.factors_for(2), {}),
    ('olmo-tiny', {'scan_layers': True}, cloning.factors_for(2, 'head_dim'), {'tie': 'untie'}),
    ('vit-tiny', {'scan_layers': True}, cloning.factors_for(2, 'head_dim'), {}),
    # tied embeddings: untie a parametric-norm model; keep the tie through RMSNorm
    ('gpt2-tiny', {}, cloning.factors_for(2), {'tie': 'untie'}),
    ('llama-tiny', {'tie_embeddings': True}, cloning.factors_for(2), {}),
    # MQA growing its kv head instead of keeping it
    ('llama-mqa-tiny', {}, cloning.factors_for(2), {'kv_rule': 'follow'}),
    # odd and unequal factors (Helmert noise with n=3, gcd-matched diagonal)
    ('llama-gqa-tiny', {}, {'embed': 3, 'mlp': 2, 'heads': 3}, {}),
    ('gpt2-tiny', {}, {'embed': 2, 'mlp': 3}, {}),          # heads fixed: explicit head_dim
    ('pythia-tiny', {}, {'embed': 4, 'mlp': 2, 'heads': 2, 'head_dim': 2}, {}),
    # muP's 1/d logit scale: no query correction under head_dim growth
    ('llama-tiny', {'attn_scale': 'linear'}, cloning.factors_for(2, 'head_dim'), {}),
    ('vit-tiny', {'pool': 'gap'}, cloning.factors_for(3), {}),
]


def _case_id(case):
  name, over, fac, opts = case
  parts = [name] + [f'{k}={v}' for k, v in over.items()] + [
      '.'.join(f'{a}{n}' for a, n in fac.items())] + [f'{k}={v}' for k, v in opts.items()]
  return ','.join(parts)


@pytest.mark.parametrize('case', FAMILY_CASES + EXTRA_CASES, ids=_case_id)
def test_clone_preserves_logits_fp32(case):
  name, over, fac, opts = case
  cfg = models.get_config(name, **over)
  params, x = _params(cfg), _inputs(cfg)
  ref = _forward(cfg)(params, x)
  for variant in VARIANTS:
    big, dst = cloning.clone_model(params, cfg, fac, variant, rng=jax.random.key(7), jit=False,
                                   **opts)
    spec.check_tree(big, models.param_specs(dst), 'clone')
    _assert_close(_forward(dst)(big, x), ref, RTOL, f'{variant} clone of {name}')


def test_clone_really_widens_and_noise_is_present():
  cfg = models.get_config('llama-gqa-tiny')
  params = _params(cfg)
  plan, dst = cloning.plan_model(cfg, cloning.factors_for(2), 'symmetric')
  assert (dst.embed_dim, dst.mlp_dim, dst.num_heads, dst.n_kv_heads, dst.d_head) == (128, 384, 8, 4,
                                                                                     16)
  assert models.count_params(dst) > 3 * models.count_params(cfg)
  sym = cloning.apply_plan(plan, params)
  noisy = cloning.clone(params, models.param_specs(cfg), cloning.factors_for(2), 'noisy_symmetric',
                        rng=1)
  k_sym, k_noisy = sym['block_0']['mlp']['wo']['kernel'], noisy['block_0']['mlp']['wo']['kernel']
  assert k_sym.shape == k_noisy.shape == (384, 128)
  assert float(jnp.abs(k_noisy - k_sym).max()) > 1e-3


@pytest.mark.parametrize('name', TINY)
def test_clone_preserves_logits_bf16(name):
  """bf16 compute (fp32 params) and bf16 params: clone vs source under the same dtype."""
  opts = {'tie': 'untie'} if name == 'olmo-tiny' else {}
  cfg = models.get_config(name, dtype='bfloat16')
  params, x = _params(cfg), _inputs(cfg)
  ref = _forward(cfg)(params, x)
  for variant in ('symmetric', 'noisy_symmetric', 'noisy_diagonal'):
    big, dst = cloning.clone_model(params, cfg, cloning.factors_for(2), variant, rng=3, jit=False,
                                   **opts)
    tol = (BF16_NOISY_TOL if variant.startswith('noisy')
           else BF16_EXACT_EXCEPT.get(('compute', name), 0.0))
    _assert_close(_forward(dst)(big, x), ref, tol, f'bf16 compute {variant}')
  # bf16 parameters: the symmetric clone of a bf16 leaf is exact (division by 2).
  cfg16 = models.get_config(name, dtype='bfloat16', param_dtype='bfloat16')
  p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  big, dst = cloning.clone_model(p16, cfg16, cloning.factors_for(2), 'symmetric', jit=False,
                                 **opts)
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(big))
  wo = np.asarray(spec.flatten(p16)['block_0/mlp/wo/kernel'], np.float32)
  np.testing.assert_array_equal(np.asarray(spec.flatten(big)['block_0/mlp/wo/kernel'], np.float32),
                                np.block([[wo / 2, wo / 2], [wo / 2, wo / 2]]))
  _assert_close(_forward(dst)(big, x), _forward(cfg16)(p16, x),
                BF16_EXACT_EXCEPT.get(('params', name), 0.0), 'bf16 params')


# --- the harness can fail: known-wrong clones are caught ----------------------------

def test_reference_opt_head_dim_bug_is_caught():
  """Tiling the flattened (embed, H*Dh) projection (the reference OPT path) mixes heads."""
  cfg = models.get_config('opt-tiny')
  params, x = _params(cfg), _inputs(cfg)
  ref = _forward(cfg)(params, x)
  big, dst = cloning.clone_model(params, cfg, cloning.factors_for(2, 'head_dim'), 'symmetric',
                                 jit=False)
  bad = jax.tree.map(lambda a: a, big)
  for blk in ('block_0', 'block_1'):
    for n in ('query', 'key', 'value'):
      k = np.asarray(params[blk]['attn'][n]['kernel'])          # (E, H, Dh)
      e, h, d = k.shape
      flat = np.tile(k.reshape(e, h * d), (2, 2)) / 2              # [W, W] on the flat axis
      if n == 'query':
        flat = flat / math.sqrt(2)
      bad[blk]['attn'][n]['kernel'] = jnp.asarray(flat.reshape(2 * e, h, 2 * d))
  good_err = np.abs(np.asarray(_forward(dst)(big, x) - ref)).max()
  bad_err = np.abs(np.asarray(_forward(dst)(bad, x) - ref)).max()
  assert good_err < RTOL * np.abs(ref).max() < 1e-2 < bad_err


def test_missing_corrections_are_caught():
  """Without the query scale, or with a tie kept but no final-norm division, logits change."""
  cfg = models.get_config('llama-mqa-tiny')   # tied, RMSNorm, RoPE
  params, x = _params(cfg), _inputs(cfg)
  ref = np.asarray(_forward(cfg)(params, x))
  plan, dst = cloning.plan_model(cfg, cloning.factors_for(2, 'head_dim'), 'symmetric')
  specs = models.param_specs(cfg)
  no_q = cloning.make_plan(specs, params, cloning.factors_for(2, 'head_dim'), 'symmetric',
                           attn_scale='linear')
  assert np.abs(np.asarray(_forward(dst)(cloning.apply_plan(no_q, params), x)) - ref).max() > 1e-2
  big = cloning.apply_plan(plan, params)
  big['final_norm']['scale'] = big['final_norm']['scale'] * 2     # undo the 1/n of the tie
  assert np.abs(np.asarray(_forward(dst)(big, x)) - ref).max() > 1e-1
  wrong_rope = dst.replace(rope_tile=1)                           # standard RoPE at the wider head
  assert np.abs(np.asarray(_forward(wrong_rope)(cloning.apply_plan(plan, params), x))
                - ref).max() > 1e-2


# --- leaf rules against block matrices written out with NumPy -----------------------

def _one(axes, fan_in, shape, factors, variant='symmetric', role='', seed=0, **kw):
  s = {'w': ParamSpec(axes, fan_in, role)}
  w = np.asarray(jax.random.normal(jax.random.key(seed), shape))
  out = cloning.clone({'w': jnp.asarray(w)}, s, factors, variant, rng=5, **kw)
  return w, np.asarray(out['w'])


def test_dense_blocks_match_the_paper():
  # Flax kernels are (in, out) = W^T, so the paper's [[W/2, W/2], [W/2, W/2]] reads the same.
  k, out = _one(('embed', 'mlp'), (0,), (3, 5), {'embed': 2, 'mlp': 2})
  np.testing.assert_array_equal(out, np.block([[k / 2, k / 2], [k / 2, k / 2]]))
  k, out = _one(('embed', 'mlp'), (0,), (3, 5), {'embed': 2, 'mlp': 2}, 'diagonal')
  z = np.zeros_like(k)
  np.testing.assert_array_equal(out, np.block([[k, z], [z, k]]))
  k, out = _one(('embed', 'mlp'), (0,), (3, 5), {'embed': 3, 'mlp': 3}, 'diagonal')
  np.testing.assert_array_equal(out, np.block([[k, z, z], [z, k, z], [z, z, k]]))
  k, out = _one(('mlp', 'vocab'), (0,), (3, 5), {'mlp': 2})             # input-only: W/n
  np.testing.assert_array_equal(out, np.block([[k / 2], [k / 2]]))
  k, out = _one(('mlp', 'vocab'), (0,), (3, 5), {'mlp': 2}, 'diagonal')  # no fan-out: still W/n
  np.testing.assert_array_equal(out, np.block([[k / 2], [k / 2]]))
  k, out = _one(('vocab', 'embed'), (0,), (7, 4), {'embed': 3}, role='embedding')  # not divided
  np.testing.assert_array_equal(out, np.block([[k, k, k]]))
  b, out = _one(('mlp',), (), (6,), {'mlp': 2})                          # bias: tiled
  np.testing.assert_array_equal(out, np.concatenate([b, b]))


def test_attention_out_kernel_diagonal_matches_loops():
  """(heads, head_dim, embed), heads and embed x2: copy c of embed reads only copy c of heads."""
  w, out = _one(('heads', 'head_dim', 'embed'), (0, 1), (3, 2, 4), {'heads': 2, 'embed': 2},
                'diagonal')
  h, d, e = w.shape
  want = np.zeros((2 * h, d, 2 * e))
  for c in range(2):
    want[c * h:(c + 1) * h, :, c * e:(c + 1) * e] = w
  np.testing.assert_array_equal(out, want)
  # head_dim growth duplicates inside each head: head i = [w_i, w_i] along head_dim.
  w, out = _one(('embed', 'heads', 'head_dim'), (0,), (4, 3, 2), {'head_dim': 2}, role='query')
  for i in range(3):
    np.testing.assert_allclose(out[:, i], np.concatenate([w[:, i], w[:, i]], -1) / math.sqrt(2),
                               rtol=1e-6)


def test_fused_gated_kernel_keeps_gate_and_up_apart():
  w, out = _one(('embed', None, 'mlp'), (0,), (4, 2, 3), {'embed': 2, 'mlp': 2})
  for g in (0, 1):   # index 0 = gate, 1 = up: each becomes its own [[W/2, W/2], [W/2, W/2]]
    k = w[:, g]
    np.testing.assert_array_equal(out[:, g], np.block([[k / 2, k / 2], [k / 2, k / 2]]))


@pytest.mark.parametrize('factors', [{'embed': 2, 'mlp': 4}, {'embed': 4, 'mlp': 2},
                                     {'embed': 3, 'mlp': 2}, {'embed': 2, 'mlp': 3}])
@pytest.mark.parametrize('variant', VARIANTS)
def test_any_variant_maps_cloned_input_to_cloned_output(factors, variant):
  """x_D K_D == tile(x K) for any factors: a block-row sums to W (np reference: x @ K)."""
  k, out = _one(('embed', 'mlp'), (0,), (6, 5), factors, variant, seed=1)
  x = np.asarray(jax.random.normal(jax.random.key(9), (3, 6)), np.float64)
  want = np.tile(x @ k, (1, factors['mlp']))
  got = np.tile(x, (1, factors['embed'])) @ out.astype(np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('n', [2, 3, 5])
@pytest.mark.parametrize('dist,kurtosis', [('irwin_hall', 2.7), ('gaussian', 3.0)])
def test_noise_zero_sum_power_and_shape(n, dist, kurtosis):
  s = {'w': ParamSpec(('layers', 'embed', 'mlp'), (1,))}
  # Two layers with very different scales: the SNR holds per layer.
  w = np.array(jax.random.normal(jax.random.key(0), (2, 128, 192)))
  w[1] *= 10.0
  snr = 12.0
  out = np.asarray(cloning.clone({'w': jnp.asarray(w)}, s, {'embed': n, 'mlp': 1},
                                 'noisy_symmetric', rng=3, snr_db=snr, noise_dist=dist)['w'])
  blocks = out.reshape(2, n, 128, 192)                      # fan-in copies along axis 1
  eta = blocks - w[:, None] / n
  np.testing.assert_allclose(eta.sum(1), 0.0, atol=1e-5 * np.abs(w).max())   # zero-sum
  for layer in range(2):
    signal = np.mean((w[layer] / n) ** 2)
    noise = np.mean(eta[layer] ** 2)
    # 49k samples per layer: the power estimate has ~0.6% (0.03 dB) standard error.
    assert abs(10 * np.log10(signal / noise) - snr) < 0.15, (layer, signal, noise)
  if n == 2:   # one draw per row: block 0 is the raw distribution (larger n mixes draws)
    z = eta[:, 0] / eta[:, 0].std(axis=(1, 2), keepdims=True)
    assert abs(np.mean(z ** 4) - kurtosis) < 0.15
  assert abs(np.corrcoef(eta[0, 0].ravel(), eta[1, 0].ravel())[0, 1]) < 0.05  # layers independent
  if n > 2:
    assert abs(np.corrcoef(eta[0, 0].ravel(), eta[0, 1].ravel())[0, 1] + 1 / (n - 1)) < 0.05


def test_noise_is_deterministic_and_leaf_local():
  cfg = models.get_config('gpt2-tiny')
  params, specs = _params(cfg), models.param_specs(cfg)
  a = cloning.clone(params, specs, cloning.factors_for(2), rng=jax.random.key(1))
  b = cloning.clone(params, specs, cloning.factors_for(2), rng=jax.random.key(1))
  c = cloning.clone(params, specs, cloning.factors_for(2), rng=jax.random.key(2))
  path = ('block_1', 'mlp', 'wi', 'kernel')
  get = lambda t: np.asarray(functools.reduce(lambda d, k: d[k], path, t))
  np.testing.assert_array_equal(get(a), get(b))
  assert not np.allclose(get(a), get(c))
  # The two layers' noise differs (seeds are per leaf).
  n0 = np.asarray(a['block_0']['mlp']['wi']['kernel'])[:64] - np.asarray(
      a['block_0']['mlp']['wi']['kernel'])[64:]
  n1 = get(a)[:64] - get(a)[64:]
  assert abs(np.corrcoef(n0.ravel(), n1.ravel())[0, 1]) < 0.1


def test_jitted_clone_equals_eager_clone():
  cfg = models.get_config('pythia-tiny', scan_layers=True)
  params = _params(cfg)
  plan, _ = cloning.plan_model(cfg, cloning.factors_for(2), 'noisy_diagonal')
  eager = cloning.apply_plan(plan, params, jax.random.key(4))
  jitted = cloning.clone_fn(plan)(params, jax.random.key(4))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), eager, jitted)


# --- configs ---------------------------------------------------------------------------

def test_clone_config_records_what_the_clone_did():
  llama = models.get_config('llama-gqa-tiny')
  hd = cloning.clone_config(llama, cloning.factors_for(2, 'head_dim'))
  assert (hd.num_heads, hd.n_kv_heads, hd.d_head, hd.rope_tile, hd.embed_dim) == (4, 2, 32, 2, 128)
  assert any('rope_tile' in r for r in cloning.nonstandard_reasons(hd))
  heads = cloning.clone_config(llama, cloning.factors_for(2))
  assert (heads.num_heads, heads.n_kv_heads, heads.d_head, heads.rope_tile) == (8, 4, 16, 1)
  assert cloning.nonstandard_reasons(heads) == []
  mqa = models.get_config('llama-mqa-tiny')
  assert cloning.clone_config(mqa, cloning.factors_for(2)).n_kv_heads == 1
  assert cloning.clone_config(mqa, cloning.factors_for(2), kv_rule='follow').n_kv_heads == 2
  gpt = cloning.clone_config(models.get_config('gpt2-tiny'), cloning.factors_for(2, 'head_dim'))
  assert gpt.rope_tile == 1 and gpt.head_dim is None and gpt.d_head == 32   # learned positions
  olmo = cloning.clone_config(models.get_config('olmo-tiny'), cloning.factors_for(2), tie='untie')
  assert not olmo.tie_embeddings
  assert cloning.factors_between(cloning.source_sizes(llama), {'embed': 192, 'mlp': 384}) == {
      'embed': 3, 'mlp': 2}


def test_describe_names_the_corrections():
  cfg = models.get_config('llama-mqa-tiny')
  plan, dst = cloning.plan_model(cfg, cloning.factors_for(2, 'head_dim'))
  text = cloning.describe(plan, cfg, dst)
  for needle in ('queries scaled by 2^-1/2', 'final norm gain/bias divided by 2', 'rope_tile=2',
                 'irwin_hall noise, snr 10 dB'):
    assert needle in text, text


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize('factors,exc,match', [
    ({'embed': 1.5}, ValueError, r"factor 1.5 for axis 'embed' is not an integer.*Net2Net"),
    ({'embed': 0}, ValueError, r"axis 'embed' must be >= 1"),
    ({'embed': True}, TypeError, r"axis 'embed' must be an integer"),
    ({'embed': '2'}, TypeError, r"axis 'embed' must be an integer"),
    ({'vocab': 2}, ValueError, r"axis 'vocab' cannot be widened"),
    ({'position': 2}, ValueError, r"axis 'position' cannot be widened"),
    ({None: 2}, ValueError, r'cannot widen an unnamed axis'),
    ({'hidden': 2}, ValueError, r"axis 'hidden' .* does not occur in the parameter annotations"),
    ({'heads': 2, 'kv_heads': 1}, ValueError, r'kv_heads factor 1 with heads factor 2'),
    ({'kv_heads': 2}, ValueError, r'kv_heads factor 2 with heads factor 1'),
])
def test_bad_factors_name_the_axis(factors, exc, match):
  cfg = models.get_config('llama-gqa-tiny')
  with pytest.raises(exc, match=match):
    cloning.plan_model(cfg, factors)


def test_non_widenable_axes_of_other_models():
  with pytest.raises(ValueError, match="axis 'classes' cannot be widened"):
    cloning.plan_model(models.get_config('vit-tiny'), {'classes': 2})
  with pytest.raises(ValueError, match="axis 'layers' cannot be widened"):
    cloning.plan_model(models.get_config('gpt2-tiny', scan_layers=True), {'layers': 2})
  with pytest.raises(ValueError, match="axis 'patch' cannot be widened"):
    cloning.plan_model(models.get_config('vit-tiny'), {'patch': 2})
  with pytest.raises(ValueError, match="kv_rule='keep'"):
    cloning.plan_model(models.get_config('llama-gqa-tiny'), cloning.factors_for(2), kv_rule='keep')
  with pytest.raises(ValueError, match=r"axis 'mlp': destination size 300 is not a multiple"):
    cloning.factors_between({'mlp': 192}, {'mlp': 300})


def test_tied_model_with_nonparametric_final_norm_needs_an_explicit_untie():
  cfg = models.get_config('olmo-tiny')
  with pytest.raises(ValueError, match=r"non-parametric final norm.*tie='untie'"):
    cloning.clone_config(cfg, cloning.factors_for(2))
  params = _params(cfg)
  with pytest.raises(ValueError, match=r"token_embed/embedding.*no leaf has role final_norm.*"
                                       r"tie='untie'"):
    cloning.clone(params, models.param_specs(cfg), cloning.factors_for(2), 'symmetric')
  # Widening only the MLP leaves the tie untouched: no choice needed.
  big, dst = cloning.clone_model(params, cfg, {'mlp': 2}, 'symmetric', jit=False)
  assert dst.tie_embeddings and dst.mlp_dim == 2 * cfg.mlp_dim


def test_annotation_tree_must_match_params():
  cfg = models.get_config('gpt2-tiny')
  params, specs = _params(cfg), models.param_specs(cfg)
  broken = dict(params)
  del broken['final_norm']
  with pytest.raises(ValueError, match=r"missing leaves \['final_norm/bias', 'final_norm/scale'\]"):
    cloning.clone(broken, specs, cloning.factors_for(2), 'symmetric')
  broken = jax.tree.map(lambda a: a, params)
  broken['block_0']['mlp']['wi']['kernel'] = jnp.zeros((64, 256, 1))
  with pytest.raises(ValueError, match=r"'block_0/mlp/wi/kernel' has shape \(64, 256, 1\)"):
    cloning.clone(broken, specs, cloning.factors_for(2), 'symmetric')
  broken = jax.tree.map(lambda a: a, params)
  broken['block_0']['mlp']['wi']['kernel'] = jnp.zeros((64, 128))   # right rank, wrong size
  with pytest.raises(ValueError, match=r"logical axis 'mlp' has size 128 in 'block_0/mlp/wi/"):
    cloning.clone(broken, specs, cloning.factors_for(2), 'symmetric')
  plan, _ = cloning.plan_model(cfg, cloning.factors_for(2), 'symmetric')
  with pytest.raises(ValueError, match=r"'block_0/mlp/wi/kernel' has shape \(64, 128\); the plan"):
    cloning.apply_plan(plan, broken)


def test_other_bad_options():
  cfg = models.get_config('gpt2-tiny')
  params, specs = _params(cfg), models.param_specs(cfg)
  with pytest.raises(ValueError, match=r"variant='noisy'"):
    cloning.clone(params, specs, cloning.factors_for(2), 'noisy')
  with pytest.raises(ValueError, match='needs an rng'):
    cloning.clone(params, specs, cloning.factors_for(2), 'noisy_symmetric')
  with pytest.raises(ValueError, match='noise_dist'):
    cloning.clone(params, specs, cloning.factors_for(2), 'noisy_symmetric', rng=0,
                  noise_dist='cauchy')
  no_role = jax.tree.map(lambda s: ParamSpec(s.axes, s.fan_in, ''), specs,
                         is_leaf=spec.is_spec)
  with pytest.raises(ValueError, match='no leaf has role query'):
    cloning.clone(params, no_role, cloning.factors_for(2, 'head_dim'), 'symmetric')
  with pytest.raises(ValueError, match="attention='width'"):
    cloning.factors_for(2, 'width')
