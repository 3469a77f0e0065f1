"""hyperinit: better starts than random init for large JAX models.

HyperCloning (function-preserving widening), LoGAH (graph-hypernetwork
parameter prediction) and muP (width-transferable parametrisation), all driven
by one per-parameter annotation (`hyperinit.spec.ParamSpec`).

A user's own Flax model (linen or NNX) enters with one call::

    params, specs = hyperinit.from_flax(model, *example_inputs)

API convention: loaders and transforms return `(params, cfg)` (or `(plan, cfg)`,
the product first, the config second); `rng` is a `jax.random.key` or an int
seed everywhere; predicates (`is_*`) return bool and `require_*` raise.
"""

from hyperinit import models, spec
from hyperinit.spec import ParamSpec, with_axes
from hyperinit.user_model import as_key, build_nnx, from_flax, into_nnx

__version__ = '0.1.0'
__all__ = ['ParamSpec', 'as_key', 'build_nnx', 'from_flax', 'into_nnx', 'models', 'spec',
           'with_axes']
