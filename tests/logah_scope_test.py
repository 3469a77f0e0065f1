"""logah.scope: which predicted leaves a fine-tuning run starts from."""

import jax
import numpy as np
import pytest

from configs import ghn as ghn_configs
from hyperinit import models, spec
from hyperinit.logah import scope
from hyperinit.studies import ghn_experiment, ghn_finetune


def _fake_prediction(target):
  """A params tree of the target's shapes filled with 7s: unmistakable next to an init."""
  return jax.tree.map(lambda x: np.full(x.shape, 7.0, x.dtype), models.param_shapes(target))


@pytest.mark.parametrize('name,scanned', [('gpt2-tiny', False), ('gpt2-tiny', True),
                                          ('vit-tiny', False), ('llama-tiny', True)])
def test_io_keeps_the_predicted_ends_and_the_random_blocks(name, scanned):
  target = models.get_config(name).replace(scan_layers=scanned)
  pred = _fake_prediction(target)
  rand = models.init_params(target, jax.random.key(0))
  out = spec.flatten(scope.restrict(pred, rand, target, 'io'))
  flat_rand = spec.flatten(rand)
  specs = spec.flatten(models.param_specs(target), is_leaf=spec.is_spec)
  blocks = [p for p in out if scope.in_blocks(p, specs[p])]
  ends = [p for p in out if p not in blocks]
  # Every block leaf is the random init's; every other leaf the prediction's.
  assert blocks and ends
  assert all(p.startswith('blocks/' if scanned else 'block_') for p in blocks)
  for p in blocks:
    np.testing.assert_array_equal(out[p], flat_rand[p])
  for p in ends:
    assert np.all(np.asarray(out[p]) == 7.0), p
  if name == 'vit-tiny':
    want_ends = {'patch_embed/kernel', 'pos_embed/embedding', 'cls_token', 'head/kernel'}
  else:   # the readout is the token table itself when tied (gpt2-tiny)
    want_ends = {'token_embed/embedding', 'final_norm/scale'} | (
        set() if target.tie_embeddings else {'lm_head/kernel'})
  assert want_ends <= set(ends), sorted(ends)
  assert scope.restrict(pred, rand, target, 'all') is pred


def test_bad_scope_and_mismatched_trees_are_refused():
  target = models.get_config('gpt2-tiny')
  pred = _fake_prediction(target)
  rand = models.init_params(target, jax.random.key(0))
  with pytest.raises(ValueError, match=r"scope 'blocks' is not one of \('all', 'io'\)"):
    scope.restrict(pred, rand, target, 'blocks')
  short = dict(rand)
  short.pop('final_norm')
  with pytest.raises(ValueError, match=r"fallback params do not match.*missing \['final_norm/bias'"):
    scope.restrict(pred, short, target, 'io')


def test_io_start_shares_the_random_arms_blocks_of_the_same_seed():
  target = models.get_config('gpt2-tiny')
  pred = _fake_prediction(target)
  start = spec.flatten(ghn_finetune.start_params(target, 3, pred, noise=0.5, scope='io'))
  rand = spec.flatten(ghn_finetune.start_params(target, 3))
  np.testing.assert_array_equal(start['block_1/attn/query/kernel'],
                                rand['block_1/attn/query/kernel'])
  # The ends are the prediction with its noise (0.5 x init std 0.02 on weight leaves).
  emb = np.asarray(start['token_embed/embedding'])
  assert np.std(emb - 7.0) == pytest.approx(0.01, rel=0.1)
  np.testing.assert_array_equal(start['final_norm/scale'], 7.0)


def test_experiment_arms():
  cfg = ghn_configs.get_config('experiment')
  assert ghn_experiment.ghn_arms(cfg) == [('logah', 'logah', 'all', 0), ('ghn3', 'ghn3', 'all', 0),
                                          ('logah-clone', 'logah', 'all', 2),
                                          ('logah-io', 'logah', 'io', 0)]
  cfg.io_decoders = ('hypernet',)
  with pytest.raises(ValueError, match=r"io_decoders names \['hypernet'\]"):
    ghn_experiment.ghn_arms(cfg)
  cfg.io_decoders, cfg.clone_decoders = (), ('gnn',)
  with pytest.raises(ValueError, match=r"clone_decoders names \['gnn'\]"):
    ghn_experiment.ghn_arms(cfg)
  cfg.clone_decoders, cfg.clone_factor = ('ghn3',), 1
  with pytest.raises(ValueError, match='clone_factor must be an integer >= 2, got 1'):
    ghn_experiment.ghn_arms(cfg)
