"""LoGAH channel permutation (MetaConfig.permute_channels): which rows, and what it preserves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperinit import models, spec
from hyperinit.logah import batching, decoders, ghn as ghn_lib, meta
from hyperinit.logah.graph import build_graph

SMALL = ghn_lib.GHNConfig(hidden=16, layers=1, heads=2, rank=4, max_dim=512)
# A ViT small enough for a quick apply: every width axis (embed 32, mlp 64) is a multiple of
# the head dim 16, and the 8x8 images have 4 patches.
VIT = dict(num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64, image_size=8, patch_size=4,
           num_channels=1, num_classes=10)


@pytest.fixture(scope='module')
def params():
  return ghn_lib.init(SMALL, jax.random.key(0))


def _predict(params, target, perm=None):
  graph = build_graph(target)
  codes = ghn_lib.node_codes(SMALL, params, batching.batch_graphs([graph]))
  codes = jax.tree.map(lambda c: c[0], codes)
  return ghn_lib.decode_params(SMALL, params, codes, target, perm=perm)


def test_permuted_factor_rows_and_vectors_are_those_rows(params):
  """rows=perm[:n] reads factor rows / W_K columns perm[:n] of the full K-row layout (numpy)."""
  r, k = SMALL.rank, SMALL.max_dim
  dec = decoders.LowRankDecoder(SMALL.hidden, r, k)
  p = params['decoder']
  codes = dec.apply({'params': p}, jax.random.normal(jax.random.key(1), (SMALL.hidden,)),
                    method=dec.codes)
  s = np.maximum(np.asarray(codes['s']).reshape(2 * r, r), 0)
  a, bt = np.split((s @ np.asarray(p['expand_kernel']) + np.asarray(p['expand_bias']))
                   .reshape(2 * k, r), 2)
  perm = np.asarray(jax.random.permutation(jax.random.key(2), k))
  got_bt, got_a = dec.apply({'params': p}, codes, 40, 24, jnp.asarray(perm[:40]),
                            jnp.asarray(perm[:24]), method=dec.factors)
  np.testing.assert_allclose(got_bt, bt[perm[:40]], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got_a, a[perm[:24]], rtol=1e-4, atol=1e-6)
  v = dec.apply({'params': p}, codes, 1, 40, jnp.asarray(perm[:40]), method=dec.vector)
  want = np.asarray(codes['a'][1]) @ np.asarray(p['expand_kernel'])[:, perm[:40]]
  np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-7)


def test_identity_permutation_is_the_default_prediction(params):
  target = models.get_config('gpt2-tiny')
  want = spec.flatten(_predict(params, target))
  got = spec.flatten(_predict(params, target, jnp.arange(SMALL.max_dim)))
  for path in want:
    np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-7, err_msg=path)


def test_only_width_axes_are_permuted():
  plans = {p.path: p.decode for p in ghn_lib.leaf_plans(SMALL, models.get_config('gpt2-tiny'))}
  sides = lambda path: (plans[path].permute_in, plans[path].permute_out)
  assert sides('token_embed/embedding') == (False, True)       # vocab fixed, embed a width
  assert sides('pos_embed/embedding') == (False, True)         # positions fixed
  assert sides('block_0/attn/out/kernel') == (True, True)      # (heads, head_dim) -> embed
  assert sides('block_0/mlp/wi/bias') == (False, True)         # a vector: its one side
  vit = {p.path: p.decode for p in ghn_lib.leaf_plans(SMALL, models.get_config('vit-tiny', **VIT))}
  patch = next(d for path, d in vit.items() if 'patch' in path and path.endswith('kernel'))
  head = next(d for path, d in vit.items() if path.startswith('head') and path.endswith('kernel'))
  assert (patch.permute_in, patch.permute_out) == (False, True)   # pixels fixed
  assert (head.permute_in, head.permute_out) == (True, False)     # classes fixed


def _head_block_permutation(k: int, width: int, head_dim: int, seed: int) -> np.ndarray:
  """A permutation of K rows that permutes whole head_dim-blocks of rows [0, width) and
  leaves every other row in place: it maps each width side of the test models onto itself."""
  order = np.random.default_rng(seed).permutation(width // head_dim)
  perm = np.arange(k)
  perm[:width] = (order[:, None] * head_dim + np.arange(head_dim)).reshape(-1)
  return perm


@pytest.mark.parametrize('name,over', [('gpt2-tiny', {}), ('vit-tiny', VIT)])
def test_a_width_permutation_predicts_the_same_function(params, name, over):
  """Under a permutation that maps every width side onto itself (whole heads moved), the
  prediction is the default one with its hidden channels permuted: the same outputs.  This
  checks that every leaf reads its width sides through the same rows and leaves vocab,
  positions, pixels and classes alone."""
  target = models.get_config(name, **over)
  head_dim = target.embed_dim // target.num_heads
  perm = _head_block_permutation(SMALL.max_dim, target.embed_dim, head_dim, 3)
  assert not np.array_equal(perm[:target.embed_dim], np.arange(target.embed_dim))
  if name.startswith('vit'):
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 1))
  else:
    x = jax.random.randint(jax.random.key(4), (2, 16), 0, target.vocab_size)
  module = models.build(target)
  want = module.apply({'params': _predict(params, target)}, x)
  permuted = _predict(params, target, jnp.asarray(perm))
  got = module.apply({'params': permuted}, x)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
  # ... and the params themselves differ (it is not the identity in disguise).
  if name == 'gpt2-tiny':
    path = 'block_0/mlp/wi/kernel'
    assert not np.allclose(spec.flatten(permuted)[path],
                           spec.flatten(_predict(params, target))[path])


def test_meta_step_with_channel_permutation(params):
  target = models.get_config('gpt2-tiny', num_layers=1, max_len=16, tie_embeddings=False)
  group = (target,)
  graphs = meta.batch_for(group)
  batch = {'tokens': jax.random.randint(jax.random.key(0), (4, 17), 0, 256)}
  on = meta.MetaConfig(warmup_steps=1, total_steps=4, permute_channels=SMALL.max_dim)
  off = meta.MetaConfig(warmup_steps=1, total_steps=4)
  run = lambda mc, key: meta.meta_step(meta.init_state(SMALL, mc, jax.random.key(0)), graphs,
                                       batch, key, ghn_cfg=SMALL, meta_cfg=mc, targets=group)[1]
  a, b = run(on, jax.random.key(5)), run(on, jax.random.key(5))
  assert np.isfinite(float(a['loss'])) and float(a['loss']) == float(b['loss'])
  assert float(a['loss']) != float(run(on, jax.random.key(6))['loss'])   # a fresh draw per key
  assert float(a['loss']) != float(run(off, jax.random.key(5))['loss'])
  with pytest.raises(ValueError, match='needs an rng key'):
    meta.meta_loss(params, graphs, batch, ghn_cfg=SMALL, targets=group, l2=0.0, permute=8)


def test_channel_permutation_shuffles_the_first_rows_only():
  perm = np.asarray(ghn_lib.channel_permutation(SMALL, jax.random.key(0), 128))
  assert sorted(perm[:128]) == list(range(128)) and not np.array_equal(perm[:128], np.arange(128))
  np.testing.assert_array_equal(perm[128:], np.arange(128, SMALL.max_dim))
  assert sorted(np.asarray(ghn_lib.channel_permutation(SMALL, jax.random.key(0)))) == list(
      range(SMALL.max_dim))
  for bad in (0, SMALL.max_dim + 1):
    with pytest.raises(ValueError, match='expected 1 <= rows'):
      ghn_lib.channel_permutation(SMALL, jax.random.key(0), bad)


def test_channel_permutation_errors():
  with pytest.raises(ValueError, match='LoGAH decoder'):
    ghn_lib.channel_permutation(SMALL.replace(decoder='ghn3', chunk=16), jax.random.key(0))
  narrow = SMALL.replace(max_dim=32)
  p = ghn_lib.init(narrow, jax.random.key(0))
  target = models.get_config('gpt2-tiny')   # embed 64, mlp 256 > K = 32
  graph = build_graph(target)
  codes = jax.tree.map(lambda c: c[0], ghn_lib.node_codes(
      narrow, p, batching.batch_graphs([graph])))
  with pytest.raises(ValueError, match='exceeds the GHN'):
    ghn_lib.decode_params(narrow, p, codes, target, perm=jnp.arange(32))
