"""A small annotated MLP for muP tests and coordinate checks.

    x [B, in] -> Dense(w) -> act -> ... -> Dense(w) -> act -> readout(out) [B, out]

Every kernel carries a `ParamSpec`: the first layer ('input', ('features',
'hidden_0')), hidden layers ('hidden_{i-1}', 'hidden_i'), and the readout
('hidden_{k-1}', 'classes') with role 'readout'.  Each hidden layer has its own
axis name so a mesh can shard consecutive layers on different axes.

The readout's forward multiplier multiplies x . W only, not the bias (as
microsoft/mup's MuReadout does); the bias has no role (only the kernel is
annotated 'readout') and class 'finite' (no width dim).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperinit.models.layers import fan_in_init, zeros_init
from hyperinit.spec import annotated

_ACTS = {'relu': jax.nn.relu, 'tanh': jnp.tanh, 'gelu': jax.nn.gelu}


class Dense(nn.Module):
  """y = mult * (x . W) + b with an annotated (in, out) kernel, fan-in axis 0."""
  features: int
  axes: tuple[str, str]
  role: str = ''
  mult: float = 1.0
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', annotated(fan_in_init(self.init_scale), self.axes, (0,),
                                            self.role), (x.shape[-1], self.features), jnp.float32)
    bias_role = '' if self.role == 'readout' else self.role   # the readout's bias is vector-like
    bias = self.param('bias', annotated(zeros_init, self.axes[1:], (), bias_role),
                      (self.features,), jnp.float32)
    return self.mult * (x @ kernel) + bias


class MLP(nn.Module):
  """Multi-layer perceptron with annotated parameters.

  Attributes:
    widths: hidden widths, e.g. (256, 256) for 48 -> 256 -> 256 -> out.
    out_features: readout size (finite: classes).
    output_mult: forward multiplier of the readout (muP: output_mult / m).
    activation: 'relu' | 'tanh' | 'gelu'.
    init_scale: std of every kernel is init_scale / sqrt(fan_in).
  """
  widths: Sequence[int]
  out_features: int
  output_mult: float = 1.0
  activation: str = 'relu'
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    if self.activation not in _ACTS:
      raise ValueError(f'activation={self.activation!r}; expected one of {sorted(_ACTS)}')
    act = _ACTS[self.activation]
    prev = 'features'
    for i, w in enumerate(self.widths):
      name = 'input' if i == 0 else f'hidden_{i}'
      x = act(Dense(w, (prev, f'hidden_{i}'), init_scale=self.init_scale, name=name)(x))
      prev = f'hidden_{i}'
    return Dense(self.out_features, (prev, 'classes'), 'readout', self.output_mult,
                 self.init_scale, name='readout')(x)
