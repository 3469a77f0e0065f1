"""ghn_finetune.cloned_prediction: a target predicted at 1/n of its width, then HyperCloned."""

import jax
import numpy as np
import pytest

from hyperinit import models
from hyperinit.logah import ghn as ghn_lib
from hyperinit.studies import ghn_finetune

SMALL = ghn_lib.GHNConfig(hidden=16, layers=1, heads=2, rank=4, max_dim=256)
GPT = models.TransformerConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=2,
                               mlp_dim=128, max_len=16, tie_embeddings=False)
VIT = models.ViTConfig(num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64, image_size=8,
                       patch_size=4, num_channels=1, num_classes=10)


@pytest.fixture(scope='module')
def ghn():
  # Untrained but not trivial: the decoder's random predictions differ per node.
  return SMALL, ghn_lib.init(SMALL, jax.random.key(0))


def test_source_config_divides_every_width():
  src = ghn_finetune.source_config(GPT, 2)
  assert (src.embed_dim, src.mlp_dim, src.num_heads, src.d_head) == (16, 64, 2, 8)
  assert (src.num_layers, src.vocab_size, src.max_len) == (2, 64, 16)
  with pytest.raises(ValueError, match='clone factor must be an integer >= 2, got 1'):
    ghn_finetune.source_config(GPT, 1)
  with pytest.raises(ValueError, match=r"clone factor 3 must divide .*'embed': 32"):
    ghn_finetune.source_config(GPT, 3)


@pytest.mark.parametrize('target', [GPT, VIT], ids=['gpt', 'vit'])
def test_clone_has_the_targets_shapes_and_the_narrow_predictions_function(ghn, target):
  cfg, params = ghn
  out = ghn_finetune.cloned_prediction(cfg, params, target, 2, seed=0)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), out) == jax.tree.map(
      lambda x: (x.shape, x.dtype), models.param_shapes(target))
  src = ghn_finetune.source_config(target, 2)
  narrow = ghn_lib.predict(cfg, params, src)
  if isinstance(target, models.TransformerConfig):
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  else:
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  want = np.asarray(models.apply_fn(src)(narrow, x))
  got = np.asarray(models.apply_fn(target)(out, x))
  # HyperCloning preserves the function (float32 rounding only), so the wide start computes the
  # narrow prediction's outputs; the GHN's direct prediction of the target does not.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  direct = np.asarray(models.apply_fn(target)(ghn_lib.predict(cfg, params, target), x))
  assert np.abs(direct - want).max() > 1e-2
  # The seed and snr drive only the clone's zero-sum symmetry-breaking noise: other params, the
  # same function, also at the experiment's -10 dB (noise ~3x the weights).
  other = ghn_finetune.cloned_prediction(cfg, params, target, 2, seed=1, snr_db=-10.0)
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), out, other))
  assert max(diffs) > 0
  np.testing.assert_allclose(np.asarray(models.apply_fn(target)(other, x)), want, rtol=1e-4,
                             atol=1e-4)
