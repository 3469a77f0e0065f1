"""HyperCloning beyond the paper: optimizer state, depth growth, symmetry metric, sharding, NNX."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import dataclasses
import functools

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyperinit import cloning, models, mup, sharding, spec
from hyperinit.cloning import widen
from hyperinit.spec import ParamSpec


@functools.lru_cache(maxsize=None)
def _forward(cfg):
  return models.apply_fn(cfg)


def _params(cfg, seed=0, std=0.1):
  rng = np.random.default_rng(seed)
  def one(path, shape):
    x = std * rng.standard_normal(shape.shape, np.float32)
    return jnp.asarray(x + 1.0 if spec.path_str(path).endswith('scale') else x, shape.dtype)
  return jax.tree_util.tree_map_with_path(one, models.param_shapes(cfg))


def _tokens(cfg, n=4, t=17, seed=2):
  return jax.random.randint(jax.random.key(seed), (n, t), 0, cfg.vocab_size)


def _max_rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


# --- optimizer state ------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _loss_and_grad(cfg):
  """Jitted (params, tokens) -> ((loss, logits), grads): one compile serves both checks."""
  module = models.build(cfg)
  def loss(params, tokens):
    logits = module.apply({'params': params}, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean(), logits
  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _run(cfg, params, tx, steps=3):
  """A run in flight: `steps` Adam steps on different batches (moments with history)."""
  state, g = tx.init(params), _loss_and_grad(cfg)
  for i in range(steps):
    _, grads = g(params, _tokens(cfg, seed=10 + i))
    upd, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, upd)
  return params, state


# The key bias only shifts all of a query's logits equally, so softmax ignores it: its
# gradient is zero up to rounding and Adam turns that rounding into O(lr) noise.
_ZERO_GRAD = ('attn/key/bias',)


@pytest.mark.parametrize('name,factors,variant', [
    ('gpt2-tiny', cloning.factors_for(2), 'symmetric'),                # tied: final-norm rule
    ('opt-tiny', {'embed': 2, 'mlp': 3, 'heads': 2}, 'symmetric'),     # unequal factors
    ('llama-gqa-tiny', cloning.factors_for(2, 'head_dim'), 'diagonal'),  # query scale, diagonal
])
def test_widened_adam_state_continues_the_source_run(name, factors, variant):
  cfg = models.get_config(name)
  params, toks = _params(cfg, std=0.05), _tokens(cfg)
  lr, wd, eps = 1e-2, 0.1, 1e-20   # tiny eps: the clone's effective eps is eps / s (see optim.py)
  tx = optax.chain(optax.scale_by_adam(eps=eps), optax.add_decayed_weights(wd), optax.scale(-lr))
  params, state = _run(cfg, params, tx)
  g = _loss_and_grad(cfg)

  plan, dst = cloning.plan_model(cfg, factors, variant)
  big = cloning.apply_plan(plan, params)
  # 1. The clone's gradient is tile(g) * s, leaf by leaf (the rule mu follows).
  (loss_s, _), g_s = g(params, toks)
  (loss_d, _), g_d = _loss_and_grad(dst)(big, toks)
  assert abs(float(loss_s) - float(loss_d)) < 1e-5
  want = spec.flatten(cloning.widen_like_gradient(g_s, plan))
  for path, got in spec.flatten(g_d).items():
    if not path.endswith(_ZERO_GRAD):
      assert _max_rel(got, want[path]) < 1e-3, path

  # 2. One more step on both: source with its state, clone with the widened state.
  big_state = cloning.widen_opt_state(state, plan)
  assert int(big_state[0].count) == 3
  tx_d = optax.chain(optax.scale_by_adam(eps=eps),
                     mup.scale_per_leaf(cloning.update_multipliers(plan)),
                     optax.add_decayed_weights(wd), optax.scale(-lr))
  big_state = (big_state[0], optax.EmptyState()) + tuple(big_state[1:])
  upd, _ = tx.update(g_s, state, params)
  params2 = optax.apply_updates(params, upd)
  upd_d, _ = tx_d.update(g_d, big_state, big)
  big2 = optax.apply_updates(big, upd_d)
  # The widened run computes the source run's next function ...
  toks2 = _tokens(cfg, seed=5)
  (_, ref), _ = g(params2, toks2)
  (_, out), _ = _loss_and_grad(dst)(big2, toks2)
  (_, before), _ = g(params, toks2)
  assert _max_rel(out, ref) < 1e-4
  assert _max_rel(before, ref) > 1e-3        # and the step did something
  # ... and for the symmetric clone it is exactly the clone of the updated source.
  if variant == 'symmetric':
    want = spec.flatten(cloning.apply_plan(plan, params2))
    for path, got in spec.flatten(big2).items():
      if not path.endswith(_ZERO_GRAD):
        assert _max_rel(got, want[path]) < 1e-4, path


def test_widened_moments_equal_those_of_a_clone_trained_from_the_start():
  """Widening after 3 steps == cloning at step 0 and running 3 steps with the wide model."""
  cfg = models.get_config('gpt2-tiny')
  plan, dst = cloning.plan_model(cfg, cloning.factors_for(2), 'symmetric')
  p0 = _params(cfg, std=0.05)
  adam = lambda: optax.scale_by_adam(eps=1e-20)
  _, state = _run(cfg, p0, optax.chain(adam(), optax.scale(-1e-2)))
  # The wide run stays a clone thanks to the multipliers, so its moments are the reference.
  wide_tx = optax.chain(adam(), mup.scale_per_leaf(cloning.update_multipliers(plan)),
                        optax.scale(-1e-2))
  _, wide_state = _run(dst, cloning.apply_plan(plan, p0), wide_tx)
  widened = cloning.widen_opt_state(state, plan)
  for field in ('mu', 'nu'):
    got = spec.flatten(getattr(widened[0], field))
    for path, ref in spec.flatten(getattr(wide_state[0], field)).items():
      if not path.endswith(_ZERO_GRAD):
        assert _max_rel(got[path], ref) < 1e-3, (field, path)


def test_widen_opt_state_handles_optax_wrappers_and_refuses_unknown_moments():
  cfg = models.get_config('gpt2-tiny')
  params = _params(cfg)
  plan, _ = cloning.plan_model(cfg, cloning.factors_for(2), 'symmetric')
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.1)
  tx = optax.chain(optax.clip_by_global_norm(1.0), tx)
  big_state = cloning.widen_opt_state(tx.init(params), plan)
  mu = big_state[1].inner_state[0].mu
  assert mu['block_0']['mlp']['wi']['kernel'].shape == (128, 512)
  assert float(big_state[1].hyperparams['learning_rate']) == pytest.approx(1e-3)
  ema = optax.ema(0.9).init(params)   # EmaState.ema: per-parameter, meaning unknown here
  with pytest.raises(ValueError, match=r'EmaState.ema holds per-parameter values'):
    cloning.widen_opt_state(ema, plan)


# --- depth growth -----------------------------------------------------------------------

@pytest.mark.parametrize('name,scan', [('gpt2-tiny', False), ('pythia-tiny', True),
                                       ('llama-gqa-tiny', False), ('vit-tiny', True)])
def test_depth_growth_preserves_logits(name, scan):
  cfg = models.get_config(name, scan_layers=scan)
  params = _params(cfg)
  x = (jax.random.normal(jax.random.key(2), (2, 32, 32, 3)) if name.startswith('vit')
       else _tokens(cfg, 2, 12))
  ref = _forward(cfg)(params, x)
  for layout in ('interleave', 'stack'):
    deep, dcfg = cloning.grow_depth_model(params, cfg, 2, layout)
    assert dcfg.num_layers == 2 * cfg.num_layers
    assert _max_rel(_forward(dcfg)(deep, x), ref) < 1e-5, layout
    # Without zeroing, the copies are not identities: the check is not vacuous.
    plain, _ = cloning.grow_depth_model(params, cfg, 2, layout, zero_residual=False)
    assert _max_rel(_forward(dcfg)(plain, x), ref) > 1e-2, layout


def test_depth_layouts_and_zeroed_leaves():
  cfg = models.get_config('gpt2-tiny', num_layers=3)
  params, specs = _params(cfg), models.param_specs(cfg)
  mark = lambda i: float(params[f'block_{i}']['mlp']['wi']['kernel'][0, 0])
  deep, _ = cloning.grow_depth(params, specs, 2, 'interleave')
  assert [float(deep[f'block_{i}']['mlp']['wi']['kernel'][0, 0]) for i in range(6)] == \
      [mark(0), mark(0), mark(1), mark(1), mark(2), mark(2)]
  deep, dspecs = cloning.grow_depth(params, specs, 2, 'stack')
  assert [float(deep[f'block_{i}']['mlp']['wi']['kernel'][0, 0]) for i in range(6)] == \
      [mark(0), mark(1), mark(2)] * 2
  zeroed = sorted(p for p, x in spec.flatten(deep['block_4']).items() if not np.any(np.asarray(x)))
  assert zeroed == ['attn/out/bias', 'attn/out/kernel', 'mlp/wo/bias', 'mlp/wo/kernel']
  assert spec.flatten(dspecs, is_leaf=spec.is_spec)['block_5/attn_norm/scale'].role == 'norm'
  with pytest.raises(ValueError, match='depth factor must be an integer'):
    cloning.grow_depth(params, specs, 1.5)
  with pytest.raises(ValueError, match='found no blocks'):
    cloning.grow_depth({'w': jnp.ones(3)}, {'w': ParamSpec(('embed',))}, 2)


def test_depth_growth_of_optimizer_state_zeroes_new_blocks():
  cfg = models.get_config('llama-tiny', scan_layers=True)
  params, specs = _params(cfg), models.param_specs(cfg)
  state = optax.adam(1e-3).init(params)
  state = jax.tree.map(lambda a: a + 1.0 if a.dtype == jnp.float32 else a, state)
  grown = cloning.grow_depth_opt_state(state, specs, 2, 'stack')
  mu = grown[0].mu['blocks']['mlp']['wi']['kernel']
  assert mu.shape[0] == 4 and np.all(np.asarray(mu[:2]) == 1) and not np.any(np.asarray(mu[2:]))


# --- symmetry diagnostic ----------------------------------------------------------------

def _np_row_similarity(w, n_in_blocks_axis, n):
  """Reference: for a 2-D kernel (in, out) widened n-fold on `in`, mean over output units of
  the mean pairwise cosine between the n incoming sub-vectors."""
  d = w.shape[0] // n
  sims = []
  for j in range(w.shape[1]):
    parts = [w[c * d:(c + 1) * d, j] for c in range(n)]
    for a in range(n):
      for b in range(n):
        if a != b:
          na, nb = np.linalg.norm(parts[a]), np.linalg.norm(parts[b])
          sims.append(parts[a] @ parts[b] / (na * nb) if na and nb else float(na == nb == 0))
  return float(np.mean(sims))


def test_symmetry_matches_numpy_reference_and_known_values():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((12, 5)).astype(np.float32)       # (in=3*4, out=5)
  got = cloning.symmetry({'w': jnp.asarray(w)}, {'w': ParamSpec(('embed', 'mlp'), (0,))},
                         {'embed': 3})['w']
  assert float(got) == pytest.approx(_np_row_similarity(w, 0, 3), abs=1e-5)
  cfg = models.get_config('gpt2-tiny', scan_layers=True)
  params = _params(cfg)
  expect = {'symmetric': 1.0, 'diagonal': 0.0,
            'noisy_symmetric': (1 - 0.1) / (1 + 0.1)}   # cos(W/2 + e, W/2 - e) at 10 dB
  for variant, value in expect.items():
    plan, _ = cloning.plan_model(cfg, cloning.factors_for(2), variant)
    big = cloning.apply_plan(plan, params, 1)
    summ = cloning.symmetry_fn(plan.dst_specs, plan.factor_dict)(big)
    assert float(summ['symmetry/overall']) == pytest.approx(value, abs=0.02), variant
    assert set(summ) == {'symmetry/overall', 'symmetry/layer_0', 'symmetry/layer_1'}


def test_symmetric_clone_stays_symmetric_under_deterministic_training_noise_breaks_it():
  cfg = models.get_config('gpt2-tiny')
  params = _params(cfg, std=0.05)
  out = {}
  for variant in ('symmetric', 'noisy_symmetric'):
    plan, dst = cloning.plan_model(cfg, cloning.factors_for(2), variant)
    big, _ = _run(dst, cloning.apply_plan(plan, params, 0), optax.adam(3e-3), steps=5)
    out[variant] = float(cloning.symmetry_summary(big, plan.dst_specs,
                                                  plan.factor_dict)['symmetry/overall'])
  assert out['symmetric'] > 1 - 1e-5
  assert out['noisy_symmetric'] < 0.9


# --- sharded params ---------------------------------------------------------------------

RULES = [('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'), ('kv_heads', None),
         ('vocab', 'tensor'), ('head_dim', None), ('layers', None), ('position', None)]


def test_clone_of_sharded_params_is_sharded_by_destination_rules():
  assert jax.device_count() == 8
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ('fsdp', 'tensor'),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)
  cfg = models.get_config('llama-gqa-tiny', scan_layers=True, tie_embeddings=True)
  params = _params(cfg)
  src_sh = sharding.tree_shardings(params, models.param_specs(cfg), mesh, RULES)
  sharded = jax.device_put(params, src_sh)
  plan, dst = cloning.plan_model(cfg, cloning.factors_for(2), 'noisy_symmetric')
  fn = cloning.clone_fn(plan, mesh=mesh, rules=RULES)
  big = fn(sharded, jax.random.key(3))
  want_sh = cloning.dst_shardings(plan, mesh, RULES)
  for path, x in spec.flatten(big).items():
    w = spec.flatten(want_sh)[path]
    assert x.sharding.is_equivalent_to(w, x.ndim), (path, x.sharding, w)
  kernel = big['blocks']['mlp']['wi']['kernel']          # (layers, embed, 2, mlp) -> 8 shards
  assert len({s.device for s in kernel.addressable_shards}) == 8
  assert kernel.addressable_shards[0].data.shape == (2, 64, 2, 96)
  # Same values as an unsharded clone: the noise does not depend on the layout.
  ref = cloning.apply_plan(plan, params, jax.random.key(3))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                                                       atol=1e-7), big, ref)
  # Never assembled on one device: per-device output + temporaries << the destination.
  total = sum(int(np.prod(s)) * 4 for s in jax.tree.leaves(
      plan.dst_shapes, is_leaf=lambda t: isinstance(t, tuple)))
  mem = fn.lower(sharded, jax.random.key(3)).compile().memory_analysis()
  assert mem.output_size_in_bytes + mem.temp_size_in_bytes < 0.35 * total
  x = _tokens(cfg, 2, 12)
  assert _max_rel(_forward(dst)(big, x), _forward(cfg)(params, x)) < 1e-5


# --- NNX: the pure-dict round trip ------------------------------------------------------

class _NnxBlock(nnx.Module):
  """Pre-LN residual MLP annotated for sharding the NNX way."""

  def __init__(self, d, f, rngs):
    part, init = nnx.with_partitioning, nnx.initializers
    self.norm = nnx.LayerNorm(d, scale_init=part(init.ones_init(), ('embed',)),
                              bias_init=part(init.normal(0.1), ('embed',)), rngs=rngs)
    self.up = nnx.Linear(d, f, kernel_init=part(init.lecun_normal(), ('embed', 'mlp')),
                         bias_init=part(init.normal(0.1), ('mlp',)), rngs=rngs)
    self.down = nnx.Linear(f, d, kernel_init=part(init.lecun_normal(), ('mlp', 'embed')),
                           bias_init=part(init.normal(0.1), ('embed',)), rngs=rngs)

  def __call__(self, x):
    return x + self.down(jax.nn.gelu(self.up(self.norm(x))))


def nnx_specs(state):
  """ParamSpecs from NNX sharding metadata (Dense convention: axis 0 is fan-in of a kernel)."""
  flat = {}
  for path, var in nnx.to_flat_state(state):
    axes = tuple(var.get_metadata()['out_sharding'])
    flat['/'.join(map(str, path))] = ParamSpec(axes, (0,) if len(axes) >= 2 else ())
  return spec.unflatten(flat)


def test_nnx_pure_dict_round_trip():
  with nnx.use_eager_sharding(False):
    small = _NnxBlock(8, 16, nnx.Rngs(0))
    big = _NnxBlock(16, 32, nnx.Rngs(1))
  _, state = nnx.split(small)
  pure = nnx.to_pure_dict(state)
  wide = cloning.clone(pure, nnx_specs(state), {'embed': 2, 'mlp': 2}, 'noisy_symmetric', rng=0)
  graph, big_state = nnx.split(big)
  nnx.replace_by_pure_dict(big_state, wide)
  big = nnx.merge(graph, big_state)
  x = jax.random.normal(jax.random.key(1), (3, 8))
  np.testing.assert_allclose(big(jnp.tile(x, (1, 2))), jnp.tile(small(x), (1, 2)), rtol=1e-5,
                             atol=1e-5)


def test_eager_clone_compiles_one_builder_per_leaf_kind_not_per_path():
  """The per-leaf builder is one jit with the path-free plan static: the layers of a model
  share compilations (issue 30.7), and a second clone compiles nothing new."""
  cfg = models.get_config('gpt2-tiny')            # two unrolled blocks: repeated leaf kinds
  params = _params(cfg)
  plan = cloning.make_plan(models.param_specs(cfg), params, cloning.factors_for(2), 'symmetric')
  kinds = {dataclasses.replace(lp, path='', src='') for lp in plan.leaves}
  assert len(kinds) < len(plan.leaves)
  widen._build_leaf.clear_cache()  # pylint: disable=protected-access
  cloning.apply_plan(plan, params)
  assert widen._build_leaf._cache_size() == len(kinds)  # pylint: disable=protected-access
  cloning.apply_plan(plan, params)
  assert widen._build_leaf._cache_size() == len(kinds)  # pylint: disable=protected-access
