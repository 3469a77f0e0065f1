"""Model family: annotations, presets, options, and a NumPy reference ViT."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperinit import models, spec

ALL_PRESETS = models.preset_names()
TINY = ['gpt2-tiny', 'opt-tiny', 'pythia-tiny', 'llama-tiny', 'llama-gqa-tiny', 'llama-mqa-tiny',
        'olmo-tiny', 'vit-tiny']


@pytest.mark.parametrize('name', ALL_PRESETS)
@pytest.mark.parametrize('scan', [False, True])
def test_every_leaf_is_annotated(name, scan):
  cfg = models.get_config(name, scan_layers=scan)
  specs, shapes = models.param_specs(cfg), models.param_shapes(cfg)
  spec.check_tree(shapes, specs)  # same tree, rank == number of axes
  flat_s = spec.flatten(specs, is_leaf=spec.is_spec)
  flat_p = spec.flatten(shapes)
  for path, s in flat_s.items():
    assert len(s.axes) == len(flat_p[path].shape), path
    assert all(0 <= i < s.rank for i in s.fan_in), path
    if path.endswith('kernel') or path.endswith('embedding'):
      assert s.fan_in, f'{path} is a matrix without fan-in axes'
    if path.endswith('bias') or path.endswith('scale'):
      assert not s.fan_in, path
    if scan and path.startswith('blocks/'):
      assert s.axes[0] == 'layers' and 0 not in s.fan_in, path
  spec.axis_sizes(shapes, specs)  # each logical name has a single size


# The Hugging Face checkpoints' parameter counts (ViTs: DeiT / ViT at 224 px, 1000 classes).
PUBLISHED = dict([
    ('gpt2', 124_439_808), ('gpt2-medium', 354_823_168), ('gpt2-large', 774_030_080),
    ('pythia-70m', 70_426_624), ('pythia-160m', 162_322_944), ('opt-125m', 125_239_296),
    ('smollm-135m', 134_515_008), ('olmo-1b', 1_176_764_416), ('vit-b', 86_567_656),
    ('gpt2-xl', 1_557_611_200), ('llama2-7b', 6_738_415_616), ('olmo-7b', 6_888_095_744),
    ('opt-1.3b', 1_315_758_080), ('opt-2.7b', 2_651_596_800), ('opt-6.7b', 6_658_473_984),
    ('pythia-410m', 405_334_016), ('pythia-1b', 1_011_781_632), ('pythia-1.4b', 1_414_647_808),
    ('pythia-2.8b', 2_775_208_960), ('smollm-360m', 361_821_120), ('vit-ti', 5_717_416),
    ('vit-s', 22_050_664), ('vit-l', 304_326_632),
])


@pytest.mark.parametrize('name,expected', sorted(PUBLISHED.items()))
def test_published_parameter_counts(name, expected):
  # Computed from shapes: nothing is allocated, so every full-size preset is checked.
  assert models.count_params(models.get_config(name)) == expected


def test_every_full_size_preset_has_its_published_count_checked():
  full = {n for n in models.preset_names() if 'tiny' not in n}
  assert full <= set(PUBLISHED), sorted(full - set(PUBLISHED))


def test_query_kernel_annotation():
  s = models.param_specs(models.get_config('llama-gqa-tiny'))
  q, k, o = (s['block_0']['attn'][n]['kernel'] for n in ('query', 'key', 'out'))
  assert q == spec.ParamSpec(('embed', 'heads', 'head_dim'), (0,), 'query')
  assert k.axes == ('embed', 'kv_heads', 'head_dim')
  assert o == spec.ParamSpec(('heads', 'head_dim', 'embed'), (0, 1))
  assert s['token_embed']['embedding'].role == 'embedding'
  assert models.param_specs(models.get_config('gpt2-tiny'))['token_embed']['embedding'].role == \
      'tied_embedding'


def test_specs_json_round_trip():
  s = models.param_specs(models.get_config('pythia-tiny', scan_layers=True))
  back = spec.specs_from_json(spec.specs_to_json(s))
  assert spec.flatten(back, is_leaf=spec.is_spec) == spec.flatten(s, is_leaf=spec.is_spec)


def test_check_tree_names_the_bad_leaf():
  cfg = models.get_config('gpt2-tiny')
  params = models.init_params(cfg, jax.random.key(0))
  params['block_0']['attn']['query']['kernel'] = jnp.zeros((64, 64))
  with pytest.raises(ValueError, match='block_0/attn/query/kernel'):
    spec.check_tree(params, models.param_specs(cfg))
  del params['block_1']
  with pytest.raises(ValueError, match='missing leaves'):
    spec.check_tree(params, models.param_specs(cfg))


def test_bad_configs_raise_clear_errors():
  with pytest.raises(ValueError, match='num_kv_heads'):
    models.get_config('llama-tiny', num_kv_heads=3)
  with pytest.raises(ValueError, match='norm'):
    models.get_config('gpt2-tiny', norm='batchnorm')
  with pytest.raises(ValueError, match='unknown model preset'):
    models.get_config('gpt5')
  with pytest.raises(ValueError, match='unknown TransformerConfig fields'):
    models.config_from_dict({'kind': 'TransformerConfig', 'widht': 3})


@pytest.mark.parametrize('name,remats', [(n, ('none',)) for n in TINY[:-1] if n != 'llama-gqa-tiny']
                         + [('llama-gqa-tiny', ('none', 'full', 'dots'))])
def test_scan_and_remat_compute_the_same_function(name, remats):
  cfg = models.get_config(name)
  params = models.init_params(cfg, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, cfg.vocab_size)
  ref = models.apply_fn(cfg)(params, tokens)
  # Stack unrolled blocks into the scanned layout.
  blocks = [params.pop(f'block_{i}') for i in range(cfg.num_layers)]
  params['blocks'] = jax.tree.map(lambda *x: jnp.stack(x), *blocks)
  for remat in remats:
    scfg = cfg.replace(scan_layers=True, remat=remat)
    out = models.apply_fn(scfg)(params, tokens)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_causality():
  cfg = models.get_config('llama-gqa-tiny')
  params = models.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (1, 10), 0, cfg.vocab_size)
  changed = tokens.at[0, 7].set((tokens[0, 7] + 1) % cfg.vocab_size)
  f = lambda t: models.apply_fn(cfg)(params, t)
  a, b = f(tokens), f(changed)
  np.testing.assert_array_equal(a[0, :7], b[0, :7])
  assert not np.allclose(a[0, 7:], b[0, 7:])


def test_bf16_compute_close_to_fp32():
  cfg = models.get_config('llama-tiny')
  params = models.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
  ref = models.apply_fn(cfg)(params, tokens)
  out = models.apply_fn(cfg.replace(dtype='bfloat16'))(params, tokens)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_fan_in_init_variance():
  cfg = models.get_config('gpt2-tiny', init='fan_in', embed_dim=256, num_heads=4, mlp_dim=1024)
  params = models.init_params(cfg, jax.random.key(0))
  wo = params['block_0']['mlp']['wo']['kernel']          # fan-in 1024 (axis 0)
  out = params['block_0']['attn']['out']['kernel']       # fan-in heads*head_dim = 256
  assert abs(float(jnp.std(wo)) * math.sqrt(1024) - 1) < 0.02
  assert abs(float(jnp.std(out)) * math.sqrt(256) - 1) < 0.02


# --- ViT against an independent NumPy implementation -------------------------

def _np_layernorm(x, g, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * g + b


def _np_gelu(x):
  from math import erf
  return 0.5 * x * (1 + np.frompyfunc(erf, 1, 1)(x / np.sqrt(2)).astype(np.float64))


def _np_vit(p, img, cfg):
  """Textbook ViT: conv patchify via explicit loops, softmax attention."""
  b, hh, ww, c = img.shape
  ps, g = cfg.patch_size, cfg.image_size // cfg.patch_size
  k = np.asarray(p['patch_embed']['kernel'])
  tok = np.zeros((b, g * g, cfg.embed_dim))
  for i in range(g):
    for j in range(g):
      patch = img[:, i * ps:(i + 1) * ps, j * ps:(j + 1) * ps, :]
      tok[:, i * g + j] = np.einsum('bxyc,xycd->bd', patch, k) + p['patch_embed']['bias']
  x = np.concatenate([np.broadcast_to(p['cls_token'], (b, 1, cfg.embed_dim)), tok], 1)
  x = x + np.asarray(p['pos_embed']['embedding'])[None]
  H, dh = cfg.num_heads, cfg.d_head
  for l in range(cfg.num_layers):
    bp = jax.tree.map(np.asarray, p[f'block_{l}'])
    a = bp['attn']
    h = _np_layernorm(x, bp['attn_norm']['scale'], bp['attn_norm']['bias'], cfg.norm_eps)
    q, kk, v = (np.einsum('btd,dhk->bthk', h, a[n]['kernel']) + a[n]['bias']
                for n in ('query', 'key', 'value'))
    s = np.einsum('bqhk,bthk->bhqt', q, kk) / np.sqrt(dh)
    s = np.exp(s - s.max(-1, keepdims=True))
    s = s / s.sum(-1, keepdims=True)
    o = np.einsum('bhqt,bthk->bqhk', s, v)
    x = x + np.einsum('bqhk,hkd->bqd', o, a['out']['kernel']) + a['out']['bias']
    h = _np_layernorm(x, bp['mlp_norm']['scale'], bp['mlp_norm']['bias'], cfg.norm_eps)
    h = _np_gelu(h @ bp['mlp']['wi']['kernel'] + bp['mlp']['wi']['bias'])
    x = x + h @ bp['mlp']['wo']['kernel'] + bp['mlp']['wo']['bias']
  x = _np_layernorm(x, p['final_norm']['scale'], p['final_norm']['bias'], cfg.norm_eps)
  return x[:, 0] @ p['head']['kernel'] + p['head']['bias']


def test_vit_matches_numpy_reference():
  cfg = models.get_config('vit-tiny', image_size=16, patch_size=4, num_classes=5)
  params = models.init_params(cfg, jax.random.key(0))
  # Non-trivial norms and biases so every parameter matters.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 * jax.random.normal(jax.random.key(len(str(path))), x.shape)
      if spec.path_str(path).endswith(('scale', 'bias')) else x, params)
  img = np.asarray(jax.random.normal(jax.random.key(3), (2, 16, 16, 3)))
  ours = models.apply_fn(cfg)(params, img)
  ref = _np_vit(jax.tree.map(np.asarray, params), img.astype(np.float64), cfg)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_vit_rejects_wrong_image_shape():
  cfg = models.get_config('vit-tiny')
  params = models.init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match=r'images must have shape \[batch, 32, 32, 3\]'):
    models.build(cfg).apply({'params': params}, jnp.zeros((1, 28, 28, 3)))
