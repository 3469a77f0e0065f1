"""Meshes, logical-axis rules, sharded init, and DP = FSDP = TP numerics on 8 CPU devices."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from configs import lm as lm_configs
from hyperinit import models, sharding
from hyperinit import spec as spec_lib
from hyperinit.train import loop, step as step_lib


def test_make_mesh_sizes_and_axis_types():
  mesh = sharding.make_mesh({'fsdp': -1, 'tensor': 2})
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 4, 'tensor': 2}
  assert mesh.axis_types == (AxisType.Auto,) * 3
  assert dict(sharding.make_mesh().shape) == {'data': 8, 'fsdp': 1, 'tensor': 1}
  assert dict(sharding.make_mesh({'data': 2}, jax.devices()[:2]).shape)['data'] == 2
  with pytest.raises(ValueError, match='needs 6 devices, have 8'):
    sharding.make_mesh({'data': 3, 'tensor': 2})
  with pytest.raises(ValueError, match='at most one mesh axis may be -1'):
    sharding.make_mesh({'data': -1, 'fsdp': -1})
  with pytest.raises(ValueError, match='unknown mesh axes'):
    sharding.make_mesh({'model': 2})


def test_logical_to_pspec_rules():
  mesh = sharding.make_mesh({'fsdp': 4, 'tensor': 2})
  rules = sharding.DEFAULT_RULES
  assert sharding.logical_to_pspec(('embed', 'mlp'), rules, mesh) == P('fsdp', 'tensor')
  assert sharding.logical_to_pspec(('heads', 'head_dim', 'embed'), rules, mesh) == \
      P('tensor', None, 'fsdp')
  # a mesh axis is used once per array; repeated logical names are fine
  assert sharding.logical_to_pspec(('patch', 'patch', 'channels', 'embed'), rules, mesh) == \
      P(None, None, None, 'fsdp')
  assert sharding.logical_to_pspec(('mlp', 'heads'), rules, mesh) == P('tensor', None)
  # not divisible: stays unsharded
  assert sharding.logical_to_pspec(('vocab', 'embed'), rules, mesh, (50257, 768)) == \
      P(None, 'fsdp')
  assert sharding.logical_to_pspec(('batch', None), rules, mesh) == P(('fsdp',), None) or \
      sharding.logical_to_pspec(('batch', None), rules, mesh) == P('fsdp', None)
  assert sharding.batch_divisor(sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})) == 4


def test_parse_and_make_rules_from_text():
  assert sharding.parse_rules('embed:fsdp, mlp:tensor,vocab:,batch:data+fsdp') == (
      ('embed', 'fsdp'), ('mlp', 'tensor'), ('vocab', None), ('batch', ('data', 'fsdp')))
  assert sharding.parse_rules(None) == sharding.parse_rules('') == ()
  with pytest.raises(ValueError, match='expected logical:mesh_axis'):
    sharding.parse_rules('embed')
  with pytest.raises(ValueError, match=r"unknown mesh axes \['model'\]"):
    sharding.parse_rules('embed:model')
  rules = sharding.make_rules('embed:,mlp:fsdp')
  assert rules[:2] == (('embed', None), ('mlp', 'fsdp'))  # overrides first ...
  assert [n for n, _ in rules].count('embed') == 1  # ... replacing the defaults
  assert len(rules) == len(sharding.DEFAULT_RULES)
  assert sharding.make_rules(None) == sharding.DEFAULT_RULES


def test_fit_rules_drops_indivisible_axes():
  cfg = models.get_config('llama-mqa-tiny')  # one kv head
  mesh = sharding.make_mesh({'data': 4, 'tensor': 2})
  rules = dict(sharding.fit_rules(sharding.DEFAULT_RULES, models.param_shapes(cfg),
                                  models.param_specs(cfg), mesh))
  assert rules['kv_heads'] is None and rules['act_kv_heads'] is None
  assert rules['heads'] == 'tensor' and rules['act_heads'] == 'tensor'


# Expected placements written out by hand from the annotations and the rules.
EXPECTED = {
    'fsdp': {'block_0/mlp/wi/kernel': P('fsdp', None), 'block_0/attn/out/kernel':
             P(None, None, 'fsdp'), 'token_embed/embedding': P(None, 'fsdp'),
             'block_0/attn/query/bias': P(None, None)},
    'tp': {'block_0/mlp/wi/kernel': P(None, 'tensor'), 'block_0/mlp/wo/kernel': P('tensor', None),
           'block_0/attn/query/kernel': P(None, 'tensor', None),
           'block_0/attn/out/kernel': P('tensor', None, None),
           'token_embed/embedding': P('tensor', None), 'block_0/mlp/wi/bias': P('tensor')},
    'hybrid': {'block_0/mlp/wi/kernel': P('fsdp', 'tensor'),
               'block_0/attn/key/kernel': P('fsdp', 'tensor', None),
               'pos_embed/embedding': P(None, 'fsdp')},
}
MESHES = {'dp': {'data': -1}, 'fsdp': {'data': 1, 'fsdp': -1}, 'tp': {'data': 2, 'tensor': 4},
          'hybrid': {'data': 2, 'fsdp': 2, 'tensor': 2}}


def _config(mesh):
  cfg = lm_configs.get_config('tiny')
  cfg.data.dataset = 'synthetic'
  cfg.data.seq_len = 32
  cfg.batch_size = 16
  cfg.num_train_steps = 3
  cfg.optimizer.warmup_steps = 1
  for k in ('data', 'fsdp', 'tensor'):
    cfg.mesh[k] = mesh.get(k, 1)
  return cfg


def _batches(n, b=16, t=32):
  rng = np.random.default_rng(0)
  return [{k: rng.integers(0, 256, (b, t)).astype(np.int32) for k in ('inputs', 'targets')}
          for _ in range(n)]


@pytest.fixture(scope='module')
def runs():
  """3 train steps of gpt2-tiny under each mesh: (losses, params, shardings, init params)."""
  out = {}
  batches = _batches(3)
  for name in ('dp', 'fsdp', 'tp'):
    mesh = MESHES[name]
    config = _config(mesh)
    s = loop.setup(config)
    state = step_lib.init_state(lambda k: models.init_params(s.task.model_cfg, k), s.tx,
                                jax.random.key(0), s.shardings)
    init = jax.device_get(state.params)
    losses = []
    for b in batches:
      state, m = s.train_step(state, loop.global_batch(b, s.batch_shardings,
                                                       s.task.batch_shapes(16)))
      losses.append(float(m['loss']))
    out[name] = (np.array(losses), state.params, init)
  return out


def test_same_init_and_loss_under_dp_fsdp_tp(runs):
  ref_losses, ref_params, ref_init = runs['dp']
  assert ref_losses[-1] < ref_losses[0]
  for name in ('fsdp', 'tp'):
    losses, params, init = runs[name]
    jax.tree.map(np.testing.assert_array_equal, init, ref_init)  # init independent of sharding
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=name)
    # atol: leaves whose true gradient is 0 (key biases) follow float noise through Adam.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 jax.device_get(params), jax.device_get(ref_params))


def _check_placement(params, name):
  params = spec_lib.flatten(params)
  mesh = params['block_0/mlp/wi/kernel'].sharding.mesh
  for path, want in EXPECTED[name].items():
    x = params[path]
    assert x.sharding.spec == want, (path, x.sharding.spec, want)
    # each device really holds only its block
    ways = [int(np.prod([mesh.shape[a] for a in ((p,) if isinstance(p, str) else p)])) if p else 1
            for p in tuple(want) + (None,) * (x.ndim - len(want))]
    assert x.addressable_shards[0].data.shape == tuple(n // w for n, w in zip(x.shape, ways)), path


@pytest.mark.parametrize('name', ['fsdp', 'tp'])
def test_trained_params_are_sharded_as_the_rules_say(runs, name):
  _check_placement(runs[name][1], name)
  assert runs['dp'][1]['block_0']['mlp']['wi']['kernel'].sharding.spec == P(None, None)


def test_hybrid_sharded_init_and_optimizer_state():
  s = loop.setup(_config(MESHES['hybrid']))
  state = step_lib.init_state(lambda k: models.init_params(s.task.model_cfg, k), s.tx,
                              jax.random.key(0), s.shardings)
  _check_placement(state.params, 'hybrid')
  mu = state.opt_state[1].mu  # chain: clip, adam, lr; moments follow their params
  assert mu['block_0']['mlp']['wi']['kernel'].sharding.spec == P('fsdp', 'tensor')
  assert state.opt_state[1].count.sharding.spec == P()


def test_activation_constraints_reach_the_program():
  s = loop.setup(_config(MESHES['tp']))
  state = step_lib.abstract_state(s.tx, s.shapes, s.shardings)
  batch = {k: jax.ShapeDtypeStruct((16, 32), np.int32, sharding=v)
           for k, v in s.batch_shardings.items()}
  with sharding.activation_context(s.mesh, s.rules):
    text = s.train_step.jitted.lower(state, batch).as_text()  # lowering only, no compile
  # q/k/v [B, T, heads, head_dim]: batch over data+fsdp, heads over tensor (act_heads)
  assert '[{"data", "fsdp"}, {}, {"tensor"}, {}]> : tensor<16x32x4x16xf32>' in text
  # MLP hidden [B, T, mlp] (act_mlp)
  assert '[{"data", "fsdp"}, {}, {"tensor"}]> : tensor<16x32x256xf32>' in text


def test_make_eval_step_old_batch_sharding_form_warns():
  mesh = sharding.make_mesh({'data': -1})
  rep = sharding.replicated(mesh)
  eval_fn = lambda p, b: {'loss': jnp.sum(p * b)}
  new = step_lib.make_eval_step(eval_fn, rep, mesh)
  with pytest.warns(DeprecationWarning, match='batch sharding was unused'):
    old = step_lib.make_eval_step(eval_fn, rep, sharding.batch_sharding(mesh, ndim=1), mesh)
  x = jnp.arange(8.0)
  assert float(new(x, x)['loss']) == float(old(x, x)['loss']) == 140.0
  assert new(x, x)['loss'].sharding.spec == P()
