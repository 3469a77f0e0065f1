"""hyperinit: better starts than random init for large JAX models.

HyperCloning (function-preserving widening), LoGAH (graph-hypernetwork
parameter prediction) and muP (width-transferable parametrisation), all driven
by one per-parameter annotation (`hyperinit.spec.ParamSpec`).
"""

from hyperinit import models, spec
from hyperinit.spec import ParamSpec

__version__ = '0.1.0'
__all__ = ['ParamSpec', 'models', 'spec']
