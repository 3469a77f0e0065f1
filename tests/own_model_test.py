"""A user's own Flax model, linen and NNX (written here, not from hyperinit.models), through
`hyperinit.from_flax`: specs inferred / declared / overridden, cloned 2x with the logits kept,
merged back into a wider NNX module, and the errors that name the leaf."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hyperinit
from hyperinit import cloning, models, spec
from hyperinit.spec import ParamSpec

VOCAB, T = 40, 8
TOKENS = (jnp.arange(2 * T).reshape(2, T) * 7) % VOCAB


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


# --- linen ----------------------------------------------------------------------------------

class LinenLM(nn.Module):
  """Embed -> (Dense, gelu, Dense) residual -> LayerNorm -> Dense to the vocabulary.

  `full=False` is the partly annotated model of issue 27.5: only the kernels (and the
  embedding) are wrapped in `nn.with_logical_partitioning`; biases and the norm are left as
  Flax gives them.
  """
  width: int = 16
  full: bool = True

  @nn.compact
  def __call__(self, tokens):
    part = nn.with_logical_partitioning
    plain = lambda init, axes: part(init, axes) if self.full else init
    x = nn.Embed(VOCAB, self.width, name='embed',
                 embedding_init=part(nn.initializers.normal(1.0), ('vocab', 'embed')))(tokens)
    h = nn.Dense(4 * self.width, name='up',
                 kernel_init=part(nn.initializers.lecun_normal(), ('embed', 'mlp')),
                 bias_init=plain(nn.initializers.normal(0.1), ('mlp',)))(x)
    x = x + nn.Dense(self.width, name='down',
                     kernel_init=part(nn.initializers.lecun_normal(), ('mlp', 'embed')),
                     bias_init=plain(nn.initializers.normal(0.1), ('embed',)))(nn.gelu(h))
    x = nn.LayerNorm(name='norm', scale_init=plain(nn.initializers.ones, ('embed',)),
                     bias_init=plain(nn.initializers.zeros, ('embed',)))(x)
    return nn.Dense(VOCAB, name='head',
                    kernel_init=part(nn.initializers.lecun_normal(), ('embed', 'vocab')))(x)


def test_linen_model_to_specs_in_one_call_with_roles_inferred():
  params, specs = hyperinit.from_flax(LinenLM(), TOKENS, rng=0)
  flat = spec.flatten(specs, is_leaf=spec.is_spec)
  assert flat['embed/embedding'] == ParamSpec(('vocab', 'embed'), (0,), 'embedding')
  assert flat['head/kernel'] == ParamSpec(('embed', 'vocab'), (0,), 'readout')
  assert flat['head/bias'] == ParamSpec(('vocab',), (), '')   # a readout's bias is a vector
  assert flat['up/kernel'] == ParamSpec(('embed', 'mlp'), (0,), '')
  assert set(flat) == set(spec.flatten(params))
  # rng: an int seed and the key it names give the same params
  same, _ = hyperinit.from_flax(LinenLM(), TOKENS, rng=jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, params, same)
  # abstract: shapes only, same specs
  shapes, abstract_specs = hyperinit.from_flax(LinenLM(), TOKENS, abstract=True)
  assert abstract_specs == specs
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(jnp.shape, params)


@pytest.mark.parametrize('full', [True, False], ids=['annotated', 'partly_annotated'])
def test_linen_clone_2x_keeps_the_logits(full):
  axes = None if full else {'norm/*': ('embed',)}   # a norm has no kernel to take axes from
  params, specs = hyperinit.from_flax(LinenLM(full=full), TOKENS, rng=1, axes=axes)
  if not full:   # the plain biases took their kernel's output axes
    assert spec.flatten(specs, is_leaf=spec.is_spec)['down/bias'].axes == ('embed',)
  wide = cloning.clone(params, specs, {'embed': 2, 'mlp': 2}, rng=0)   # noisy_symmetric
  small = LinenLM(16, full).apply({'params': params}, TOKENS)
  big = LinenLM(32, full).apply({'params': wide}, TOKENS)
  assert _rel(big, small) <= 1e-5
  # the widened tree is exactly the wide model's own
  _, wide_specs = hyperinit.from_flax(LinenLM(32, full), TOKENS, axes=axes, abstract=True)
  spec.check_tree(wide, wide_specs)


def test_partly_annotated_error_names_the_leaf():
  with pytest.raises(TypeError, match=r"'norm/bias' \(16,\).*has no axis annotation.*axes="):
    hyperinit.from_flax(LinenLM(full=False), TOKENS)
  # the same from boxed variables (eval_shape), the path the issue hit
  boxed = jax.eval_shape(LinenLM(full=False).init, jax.random.key(0), TOKENS)
  with pytest.raises(TypeError, match="'norm/scale'"):
    spec.specs_from_boxed(boxed['params'])
  params, specs = hyperinit.from_flax(boxed, axes={'norm/scale': ('embed',),
                                                   'norm/bias': ('embed',)})
  assert isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)
  assert spec.flatten(specs, is_leaf=spec.is_spec)['up/bias'] == ParamSpec(('mlp',))


class TwoHeads(nn.Module):
  """No readout to infer by axes ('tokens' is not a data axis), plus a DenseGeneral merge."""

  @nn.compact
  def __call__(self, x):
    part = nn.with_logical_partitioning
    h = nn.DenseGeneral((2, 4), name='split', use_bias=False,
                        kernel_init=part(nn.initializers.lecun_normal(), ('embed', 'heads', 'hd')))(x)
    h = nn.DenseGeneral(8, axis=(-2, -1), name='merge',
                        kernel_init=part(nn.initializers.lecun_normal(), ('heads', 'hd', 'embed')))(h)
    return nn.Dense(5, name='proj', use_bias=False,
                    kernel_init=hyperinit.with_axes(nn.initializers.lecun_normal(),
                                                    ('embed', 'tokens'), role='readout'))(h)


def test_fan_in_from_the_bias_roles_declared_and_overridden():
  x = jnp.ones((1, 8))
  params, specs = hyperinit.from_flax(TwoHeads(), x)
  flat = spec.flatten(specs, is_leaf=spec.is_spec)
  assert flat['merge/kernel'].fan_in == (0, 1)      # the dims its bias (embed,) lacks
  assert flat['split/kernel'].fan_in == (0,)        # no bias: Dense's convention
  assert flat['proj/kernel'].role == 'readout'      # declared in the annotation
  # with_axes is a valid partitioning annotation: Flax's sharding reads it
  boxed = TwoHeads().init(jax.random.key(0), x)['params']
  assert nn.get_partition_spec(boxed)['proj']['kernel'] == jax.sharding.PartitionSpec(
      'embed', 'tokens')
  # overrides by path and pattern; a path that names nothing is an error
  _, specs = hyperinit.from_flax(TwoHeads(), x, roles={'proj/kernel': ''},
                                 fan_in={'split/*': (0,)})
  assert spec.flatten(specs, is_leaf=spec.is_spec)['proj/kernel'].role == ''
  with pytest.raises(ValueError, match=r"roles=\{'head/kernel'.*names no parameter"):
    hyperinit.from_flax(TwoHeads(), x, roles={'head/kernel': 'readout'})
  with pytest.raises(ValueError, match='unknown role'):
    hyperinit.from_flax(TwoHeads(), x, roles={'proj/kernel': 'logits'})
  with pytest.raises(ValueError, match='fan_in'):
    hyperinit.with_axes(nn.initializers.zeros, ('a', 'b'), fan_in=(2,))


# --- NNX ------------------------------------------------------------------------------------

class NnxBlock(nnx.Module):
  def __init__(self, d, f, rngs):
    part, init = nnx.with_partitioning, nnx.initializers
    self.norm = nnx.RMSNorm(d, scale_init=part(init.ones_init(), ('embed',)), rngs=rngs)
    self.up = nnx.Linear(d, f, kernel_init=part(init.lecun_normal(), ('embed', 'mlp')),
                         bias_init=init.normal(0.1), rngs=rngs)   # bias left unannotated
    self.down = nnx.Linear(f, d, kernel_init=part(init.lecun_normal(), ('mlp', 'embed')),
                           use_bias=False, rngs=rngs)

  def __call__(self, x):
    return x + self.down(nnx.gelu(self.up(self.norm(x))))


class NnxLM(nnx.Module):
  def __init__(self, d, rngs, layers=2):
    part, init = nnx.with_partitioning, nnx.initializers
    self.embed = nnx.Embed(VOCAB, d, rngs=rngs,
                           embedding_init=part(init.normal(1.0), ('vocab', 'embed')))
    self.blocks = nnx.List([NnxBlock(d, 4 * d, rngs) for _ in range(layers)])
    self.head = nnx.Linear(d, VOCAB, use_bias=False, rngs=rngs, kernel_init=part(
        init.lecun_normal(), ('embed', 'vocab'), fan_in=(0,), role='readout'))

  def __call__(self, tokens):
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x)
    return self.head(x)


def test_nnx_clone_2x_end_to_end():
  small = hyperinit.build_nnx(NnxLM, 16, nnx.Rngs(0))   # no mesh needed (flax 0.12 eager sharding)
  params, specs = hyperinit.from_flax(small)
  flat = spec.flatten(specs, is_leaf=spec.is_spec)
  assert flat['blocks/0/up/bias'] == ParamSpec(('mlp',))
  assert flat['head/kernel'] == ParamSpec(('embed', 'vocab'), (0,), 'readout')
  assert flat['embed/embedding'].role == 'embedding'
  wide = cloning.clone(params, specs, {'embed': 2, 'mlp': 2}, rng=jax.random.key(3))
  big = hyperinit.into_nnx(lambda: NnxLM(32, nnx.Rngs(1)), wide)
  assert big.head.kernel[...].shape == (32, VOCAB)
  assert _rel(big(TOKENS), small(TOKENS)) <= 1e-5
  # the merged module is an ordinary NNX module: its params round-trip
  back, _ = hyperinit.from_flax(big)
  jax.tree.map(np.testing.assert_array_equal, back, wide)


def test_into_nnx_names_the_leaf_that_does_not_fit():
  small = hyperinit.build_nnx(NnxLM, 16, nnx.Rngs(0))
  params, _ = hyperinit.from_flax(small)
  with pytest.raises(ValueError, match=r"fit the module \(10 leaves\): 'blocks/0/down/kernel' "
                                       r'has shape \(64, 16\), the module wants \(128, 32\)'):
    hyperinit.into_nnx(lambda: NnxLM(32, nnx.Rngs(1)), params)
  del params['head']
  with pytest.raises(ValueError, match=r"missing \['head/kernel'\]"):
    hyperinit.into_nnx(small, params)


def test_rng_int_and_key_clone_alike():
  params, specs = hyperinit.from_flax(LinenLM(), TOKENS)
  by_int = cloning.clone(params, specs, {'embed': 2, 'mlp': 2}, rng=7)
  by_key = cloning.clone(params, specs, {'embed': 2, 'mlp': 2}, rng=jax.random.key(7))
  jax.tree.map(np.testing.assert_array_equal, by_int, by_key)
  assert hyperinit.as_key(7).dtype == jax.random.key(7).dtype
  # a traced int (inside jit) names the same key; the model zoo's jitted init takes ints
  np.testing.assert_array_equal(jax.random.key_data(jax.jit(hyperinit.as_key)(3)),
                                jax.random.key_data(jax.random.key(3)))
  cfg = models.get_config('gpt2-tiny', num_layers=1)
  spec.check_tree(models.init_params(cfg, 3), models.param_specs(cfg))
