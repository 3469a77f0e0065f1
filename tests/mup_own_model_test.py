"""muP on a user's own linen and NNX models (issue 27) and the optax-shaped optimizers (issue 30).

The models below are written here, as a user would, annotated only with Flax's own
`nn.with_logical_partitioning` / `nnx.with_partitioning` (no roles): the readout is found
from its 'classes' / 'vocab' output axis, the init is rescaled from the model's own
initializer (measured at the base width), the forward multipliers are folded into the
weights, and the coordinate check is flat.
"""

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hyperinit import models, mup, spec
from hyperinit.mup import coord
from hyperinit.mup.mlp import MLP

IN, OUT = 48, 10
INITS = {'lecun_normal': nn.initializers.lecun_normal(),
         'normal_0.02': nn.initializers.normal(0.02),
         'xavier': nn.initializers.xavier_normal()}


class Net(nn.Module):
  """A user's linen MLP: in -> width -> width -> head."""
  width: int
  init_name: str = 'lecun_normal'
  out_axis: str = 'classes'

  @nn.compact
  def __call__(self, x):
    def dense(n, axes, name):
      return nn.Dense(n, kernel_init=nn.with_logical_partitioning(INITS[self.init_name], axes),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
                      name=name)
    x = jax.nn.relu(dense(self.width, ('features', 'hidden'), 'inp')(x))
    x = jax.nn.relu(dense(self.width, ('hidden', 'hidden2'), 'mid')(x))
    return dense(OUT, ('hidden2', self.out_axis), 'head')(x)


def _linen(init='lecun_normal', out_axis='classes'):
  x0 = jnp.zeros((1, IN))

  def params(w, key):
    return spec.unbox(Net(w, init, out_axis).init(key, x0)['params'])

  def specs(w):
    boxed = jax.eval_shape(Net(w, init, out_axis).init, jax.random.key(0), x0)['params']
    return spec.specs_from_boxed(boxed)
  return mup.linen_apply(lambda w: Net(w, init, out_axis)), params, specs


class NNXNet(nnx.Module):
  """A user's NNX token model: embed -> Linear -> relu -> Linear -> head over the vocab."""

  def __init__(self, width, rngs, vocab=32):
    init = nnx.initializers.lecun_normal()
    part = nnx.with_partitioning
    self.embed = nnx.Embed(vocab, width, rngs=rngs, embedding_init=part(
        nnx.initializers.normal(1.0), ('vocab', 'embed')))
    self.fc1 = nnx.Linear(width, 2 * width, rngs=rngs, kernel_init=part(init, ('embed', 'mlp')),
                          bias_init=part(nnx.initializers.zeros, ('mlp',)))
    self.fc2 = nnx.Linear(2 * width, width, rngs=rngs, kernel_init=part(init, ('mlp', 'embed')),
                          bias_init=part(nnx.initializers.zeros, ('embed',)))
    self.head = nnx.Linear(width, vocab, rngs=rngs, kernel_init=part(init, ('embed', 'vocab')),
                           bias_init=part(nnx.initializers.zeros, ('vocab',)))

  def __call__(self, tokens):
    h = self.embed(tokens)
    h = h + self.fc2(jax.nn.relu(self.fc1(h)))
    return self.head(h).mean(axis=1)


def _build_nnx(width, key):
  with nnx.use_eager_sharding(False):     # flax 0.12: annotated variables outside a mesh
    return NNXNet(width, nnx.Rngs(key))


def _nnx_specs(model):
  """The spec recipe for NNX: one ParamSpec per nnx.Param, from its partitioning names."""
  flat = {'/'.join(str(k) for k in path): v for path, v in nnx.state(model, nnx.Param).flat_state()}
  return spec.unflatten({k: spec.ParamSpec(tuple(v.get_metadata()['out_sharding']),
                                           (0,) if len(v.get_metadata()['out_sharding']) >= 2
                                           else ())
                         for k, v in flat.items()})


def _nnx():
  def params(w, key):
    return nnx.state(_build_nnx(w, key), nnx.Param).to_pure_dict()

  def specs(w):
    return _nnx_specs(nnx.eval_shape(lambda: _build_nnx(w, jax.random.key(0))))
  return mup.nnx_apply(lambda w: _build_nnx(w, jax.random.key(0))), params, specs


def _mults(specs_fn, params_fn, width, base=64, **kw):
  shapes = {w: jax.eval_shape(lambda k, w=w: params_fn(w, k), jax.random.key(0))
            for w in (width, base, 2 * base)}
  return mup.width_multipliers(specs_fn(width), shapes[width], base_specs=specs_fn(base),
                               base_shapes=shapes[base], delta_specs=specs_fn(2 * base),
                               delta_shapes=shapes[2 * base], **kw)


# --- the readout: inferred, or a clear error -------------------------------------------

def test_readout_is_inferred_from_the_output_axis():
  _, params, specs = _linen()
  m = _mults(specs, params, 256)
  assert m['head/kernel'].cls == 'output' and m.readout_width_mult == 4.0
  assert m['mid/kernel'].cls == 'hidden' and m['head/bias'].cls == 'finite'
  _, nparams, nspecs = _nnx()
  n = _mults(nspecs, nparams, 256)
  assert n['head/kernel'].cls == 'output' and n['embed/embedding'].cls == 'input'


def test_ambiguous_readout_raises_naming_the_leaf_and_the_argument():
  _, params, specs = _linen(out_axis='out')         # nothing says 'head' is the readout
  with pytest.raises(ValueError, match=r"readout=\['head/kernel'\]"):
    _mults(specs, params, 256)
  assert _mults(specs, params, 256, readout=['head/kernel'])['head/kernel'].cls == 'output'
  assert _mults(specs, params, 256, readout=())['head/kernel'].cls == 'bottleneck'
  # A declared role wins over the output axis.
  s = spec.with_fan_in(specs(256), {})
  s['head']['kernel'] = spec.ParamSpec(('hidden2', 'out'), (0,), 'readout')
  shapes = jax.eval_shape(lambda k: params(256, k), jax.random.key(0))
  bs, bsh = specs(64), jax.eval_shape(lambda k: params(64, k), jax.random.key(0))
  bs['head']['kernel'] = spec.ParamSpec(('hidden2', 'out'), (0,), 'readout')
  assert mup.width_multipliers(s, shapes, base_specs=bs, base_shapes=bsh)['head/kernel'].cls \
      == 'output'


# --- init: measured from the model's own initializer -------------------------------------

def _target_std(init, fan_in, fan_out):
  return {'lecun_normal': 1 / math.sqrt(fan_in), 'normal_0.02': 0.02,
          'xavier': math.sqrt(2 / (fan_in + fan_out))}[init]


@pytest.mark.parametrize('init', sorted(INITS))
def test_rescaled_init_std_is_mups_target(init):
  _, params, specs = _linen(init)
  w, b = 512, 64
  m = _mults(specs, params, w)
  p = jax.jit(lambda k1, k2: mup.rescale_init(params(w, k1), m, base_params=params(b, k2),
                                              readout='base'))(jax.random.key(1),
                                                               jax.random.key(2))
  # muP: hidden std = base std / sqrt(fan_in_m); input and readout = the base width's std.
  want = {'inp/kernel': _target_std(init, IN, b),
          'mid/kernel': _target_std(init, b, b) / math.sqrt(w / b),
          'head/kernel': _target_std(init, b, OUT)}
  for path, std in want.items():
    got = float(np.std(spec.flatten(p)[path]))
    assert abs(got / std - 1) < 0.05, (init, path, got, std)
  assert float(np.max(np.abs(spec.flatten(p)['mid/bias']))) == 0.0
  with pytest.raises(ValueError, match='base_params='):
    mup.rescale_init(params(w, jax.random.key(0)), m)     # no silent 'normal' any more


# --- forward multipliers folded into the weights --------------------------------------------

def _train(module, params, tx, steps=3):
  x = jax.random.normal(jax.random.key(3), (16, IN))
  y = jax.random.randint(jax.random.key(4), (16,), 0, OUT)

  def loss(p):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        module.apply({'params': p}, x), y))

  def run(p):
    st = tx.init(p)
    for _ in range(steps):
      u, st = tx.update(jax.grad(loss)(p), st, p)
      p = optax.apply_updates(p, u)
    return module.apply({'params': p}, x)
  return jax.jit(run)(params)


@pytest.mark.parametrize('kind,kw', [
    ('adamw', dict(weight_decay=0.1)), ('adamw', dict(weight_decay=0.1, wd_mode='follows_lr')),
    ('adam', dict(weight_decay=0.01)), ('sgd', dict(momentum=0.9, weight_decay=0.01)),
    ('lion', dict(weight_decay=0.1))])
def test_folded_readout_multiplier_is_exact(kind, kw):
  """logits x 1/m in the forward pass == the readout kernel x 1/m with `folded=`, over steps."""
  m = coord.mlp_multipliers(256, 64)
  mup_mlp, sp_mlp = MLP((256, 256), OUT, 1.0 / m.readout_width_mult), MLP((256, 256), OUT)
  p = spec.unbox(mup_mlp.init(jax.random.key(0), jnp.zeros((1, IN)))['params'])
  p = mup.rescale_init(p, m, init_scheme='fan_in', readout='base')
  fold = mup.forward_fold(m)
  assert fold['readout/kernel'] == 0.25 and fold['readout/bias'] == 1.0
  lr = 1.0 if kind == 'sgd' else 1e-2
  want = _train(mup_mlp, p, mup.make_optimizer(kind, lr, m, **kw))
  got = _train(sp_mlp, mup.scale_leaves(p, fold),
               mup.make_optimizer(kind, lr, m, folded=fold, **kw))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_folded_attention_and_logits_equal_mup_config():
  """Our Transformer in SP form + `forward_fold` computes what `mup_config` (1/d, 1/m) does."""
  base = models.get_config('gpt2-tiny', tie_embeddings=False, num_heads=4)
  target = base.replace(embed_dim=256, mlp_dim=1024)
  cfg = mup.mup_config(target, base)
  m = mup.config_multipliers(cfg, base)
  fold = mup.forward_fold(m)
  assert fold['block_0/attn/query/kernel'] == pytest.approx(0.5)    # head_dim x4: 1/sqrt(4)
  assert fold['lm_head/kernel'] == 0.25 and fold['block_0/attn/key/kernel'] == 1.0
  p = models.init_params(target, jax.random.key(0))
  toks = jax.random.randint(jax.random.key(1), (2, 16), 0, target.vocab_size)
  want = models.build(cfg).apply({'params': p}, toks)
  got = models.build(target).apply({'params': mup.scale_leaves(p, fold)}, toks)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='tied embeddings'):
    tied = models.get_config('gpt2-tiny', num_heads=4)
    mup.forward_fold(mup.config_multipliers(tied.replace(embed_dim=256, mlp_dim=1024), tied))


# --- the coordinate check on the user's models --------------------------------------------

WIDTHS = (64, 128, 256, 512)


def _assert_flat(res, tol=0.07):
  for layer, s in res.slopes().items():
    for t in (1, 2):
      assert abs(s[t]) <= tol, f'{layer} slope {s[t]:+.3f} at t={t + 1}\n{res.table()}'


def test_linen_coord_check_is_flat_under_mup():
  apply_fn, params, specs = _linen()
  kx, ky = jax.random.split(jax.random.key(5))
  batch = (jax.random.normal(kx, (64, IN)), jax.random.randint(ky, (64,), 0, OUT))
  res = mup.coord_check(apply_fn, params, specs, batch, widths=WIDTHS, seeds=range(4))
  assert {'inp', 'mid', 'head', 'output'} <= set(res.acts)
  _assert_flat(res)
  assert np.all(res.acts['output'][0] == 0)                   # zero readout at init
  sp = mup.coord_check(apply_fn, params, specs, batch, widths=WIDTHS, seeds=range(2), param='sp')
  assert np.all(sp.slopes()['output'][1:] >= 0.5), sp.table()   # the check can fail


def test_nnx_coord_check_is_flat_under_mup():
  apply_fn, params, specs = _nnx()
  kx, ky = jax.random.split(jax.random.key(6))
  batch = (jax.random.randint(kx, (16, 8), 0, 32), jax.random.randint(ky, (16,), 0, 32))
  res = mup.coord_check(apply_fn, params, specs, batch, widths=WIDTHS, seeds=range(4))
  assert {'embed', 'fc1', 'fc2', 'head', 'output'} <= set(res.acts)
  _assert_flat(res)


# --- nnx.Optimizer with a muP optimizer ----------------------------------------------------

def test_nnx_optimizer_with_mup_matches_the_functional_update():
  _, params_fn, specs_fn = _nnx()
  m = _mults(specs_fn, params_fn, 256)
  fold = mup.forward_fold(m)
  model = _build_nnx(256, jax.random.key(0))
  pure = nnx.state(model, nnx.Param).to_pure_dict()
  base = nnx.state(_build_nnx(64, jax.random.key(1)), nnx.Param).to_pure_dict()
  pure = mup.scale_leaves(mup.rescale_init(pure, m, base_params=base, readout='base'), fold)
  nnx.update(model, pure)                         # the muP init, into the module
  tx = mup.adamw(1e-2, weight_decay=0.1, mults=m, folded=fold)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  toks = jax.random.randint(jax.random.key(2), (4, 8), 0, 32)

  def loss(mdl):
    return jnp.mean(mdl(toks) ** 2)
  grads = nnx.grad(loss)(model)
  opt.update(model, grads)
  # The same step on the pure dict.
  graphdef, _ = nnx.split(model)

  def loss_pure(p):
    mdl = _build_nnx(256, jax.random.key(0))
    nnx.update(mdl, p)
    return loss(mdl)
  g = jax.grad(loss_pure)(pure)
  u, _ = tx.update(g, tx.init(pure), pure)
  want = spec.flatten(optax.apply_updates(pure, u))
  got = spec.flatten(nnx.state(model, nnx.Param).to_pure_dict())
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-7, err_msg=k)


# --- the optax-shaped signatures ---------------------------------------------------------

def test_optimizers_take_optax_signatures_and_old_names_warn():
  m = coord.mlp_multipliers(256, 64)
  with pytest.raises(TypeError, match='mults=mults'):
    mup.adamw(1e-3, m)                                 # the old positional mults
  with pytest.raises(TypeError, match='keyword-only'):
    mup.adam(1e-3, None)
  with pytest.raises(AttributeError, match='private'):
    mup.chain  # pylint: disable=pointless-statement
  with pytest.raises(TypeError):
    mup.adam(1e-3, weight_decay=0.1)                   # optax.adam has no decay: l2_coupled=
  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    assert mup.lr_multipliers(m, 'sgd') == mup.factor_table(m, 'sgd')
  assert any(issubclass(x.category, DeprecationWarning) for x in w)
  assert mup.factor_table(None) is None
  assert mup.factor_table(m, lr_factors={k: 2.0 for k in m.leaves})['hidden_1/kernel'] == 0.5


def test_init_params_takes_a_key_or_an_int_seed():
  base = models.get_config('gpt2-tiny', tie_embeddings=False)
  cfg = base.replace(embed_dim=128, mlp_dim=512)
  m = mup.config_multipliers(cfg, base)
  a, b = mup.init_params(cfg, 3, m), mup.init_params(cfg, jax.random.key(3), m)
  for k, v in spec.flatten(a).items():
    np.testing.assert_array_equal(v, spec.flatten(b)[k], err_msg=k)
