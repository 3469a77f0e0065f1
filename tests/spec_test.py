"""The Flax `nn.with_logical_partitioning` path: a user's own module annotated for sharding
only gets ParamSpecs (`spec.specs_from_boxed`, fixed with `spec.with_fan_in`) that drive
HyperCloning and muP like our models' annotations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperinit import cloning, mup, spec
from hyperinit.spec import ParamSpec


class UserMLP(nn.Module):
  """x [B, embed] -> Dense(mlp) -> relu -> DenseGeneral(groups, chan) -> merge -> Dense(embed)."""
  width: int = 16
  heads: int = 2

  @nn.compact
  def __call__(self, x):
    part = nn.with_logical_partitioning
    h = nn.Dense(self.width, kernel_init=part(nn.initializers.lecun_normal(), ('embed', 'mlp')),
                 bias_init=part(nn.initializers.normal(0.1), ('mlp',)), name='wi')(x)
    h = nn.relu(h)
    h = nn.DenseGeneral((self.heads, self.width // self.heads), use_bias=False, name='split',
                        kernel_init=part(nn.initializers.lecun_normal(),
                                         ('mlp', 'groups', 'chan')))(h)
    # Output projection contracting two axes: its fan-in is (0, 1), not Dense's (0,).
    return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), use_bias=False, name='merge',
                           kernel_init=part(nn.initializers.lecun_normal(),
                                            ('groups', 'chan', 'embed')))(h)


def _boxed(module, embed=8):
  return jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, embed)))['params']


def test_specs_from_boxed_reads_names_and_guesses_dense_fan_in():
  specs = spec.specs_from_boxed(_boxed(UserMLP()))
  assert specs['wi']['kernel'] == ParamSpec(('embed', 'mlp'), (0,))
  assert specs['wi']['bias'] == ParamSpec(('mlp',), ())
  assert specs['split']['kernel'] == ParamSpec(('mlp', 'groups', 'chan'), (0,))
  assert specs['merge']['kernel'] == ParamSpec(('groups', 'chan', 'embed'), (0,))  # the guess
  fixed = spec.with_fan_in(specs, {'merge/kernel': (0, 1)})
  assert fixed['merge']['kernel'] == ParamSpec(('groups', 'chan', 'embed'), (0, 1))
  assert fixed['wi'] == specs['wi']                      # only the named leaf changes
  # Our own Annotated boxes give their full spec (role included).
  own = spec.specs_from_boxed({'k': spec.Annotated(jnp.zeros((4, 2)), ('embed', 'vocab'),
                                                   fan_in=(0,), role='readout')})
  assert own['k'] == ParamSpec(('embed', 'vocab'), (0,), 'readout')
  with pytest.raises(TypeError, match='has no axis annotation'):
    spec.specs_from_boxed({'w': jnp.zeros((2, 2))})


def test_user_module_specs_drive_cloning_and_mup():
  small, big = UserMLP(width=16, heads=2), UserMLP(width=32, heads=2)   # mlp, chan x2
  boxed = _boxed(small)
  specs = spec.with_fan_in(spec.specs_from_boxed(boxed), {'merge/kernel': (0, 1)})
  params = spec.unbox(small.init(jax.random.key(1), jnp.zeros((1, 8)))['params'])
  x = jax.random.normal(jax.random.key(2), (4, 8))
  # HyperCloning by the annotations: mlp and chan x2 computes the same function.
  wide = cloning.clone(params, specs, {'mlp': 2, 'chan': 2}, 'symmetric')
  np.testing.assert_allclose(big.apply({'params': wide}, x), small.apply({'params': params}, x),
                             rtol=1e-5, atol=1e-6)
  # muP classes from the same annotations: embed stays, mlp and chan double.
  big_boxed = _boxed(big)
  big_specs = spec.with_fan_in(spec.specs_from_boxed(big_boxed), {'merge/kernel': (0, 1)})
  m = mup.width_multipliers(big_specs, spec.unbox(big_boxed), base_specs=specs,
                            base_shapes=spec.unbox(boxed), readout=())   # no readout: a bottleneck
  classes = {k: v.cls for k, v in m.leaves.items()}
  assert classes == {'wi/kernel': 'input', 'wi/bias': 'vector', 'split/kernel': 'hidden',
                     'merge/kernel': 'bottleneck'}   # infinite fan-in, not the readout
  assert m.leaves['merge/kernel'].fan_in_mult == 2.0
  # Dense's fan-in guess (0,) would put the growing chan on merge's fan-out side.
  guessed = mup.width_multipliers(spec.specs_from_boxed(big_boxed), spec.unbox(big_boxed),
                                  base_specs=spec.specs_from_boxed(boxed),
                                  base_shapes=spec.unbox(boxed), readout=())
  assert guessed.leaves['merge/kernel'].cls == 'input'
