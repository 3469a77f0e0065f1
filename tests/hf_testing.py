"""Shared pieces of the tests that compare against Hugging Face transformers (CPU torch).

Imported by tests as `import hf_testing` (pytest puts tests/ on sys.path).
"""

import math

import jax
import numpy as np
import pytest

from hyperinit import models, spec

# Token ids < 101 (the tests' vocab), [2, 11].
TOKENS = np.random.RandomState(0).randint(0, 101, size=(2, 11))
# Special-token ids valid for the tests' small vocabularies.
TOK_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=None)


def require_hf():
  """(torch, transformers), or skips the test with the reason."""
  torch = pytest.importorskip('torch', reason='torch is not installed (pip install .[hf])')
  transformers = pytest.importorskip('transformers', reason='transformers is not installed')
  return torch, transformers


def randomize_torch(torch, model, seed=0):
  """O(1) activations, norm gains 1 + 0.2 N(0,1), biases 0.2 N(0,1): every parameter matters."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if p.ndim == 1:
        p.copy_((1.0 if name.endswith('weight') else 0.0) + 0.2 * noise)
      else:
        p.copy_(noise / math.sqrt(p[0].numel()))


def random_params(cfg, seed=0):
  """Random params drawn on the host (no init compile): var 1/fan_in for matrices, gains
  1 + 0.2 N(0, 1), biases / cls token 0.2 N(0, 1)."""
  rng = np.random.RandomState(seed)
  def one(path, s, shape):
    x = rng.randn(*shape.shape)
    if s.fan_in:
      x = x / math.sqrt(math.prod(shape.shape[i] for i in s.fan_in))
    else:
      x = (1.0 if spec.path_str(path).endswith('scale') else 0.0) + 0.2 * x
    return x.astype(shape.dtype)
  return jax.tree_util.tree_map_with_path(one, models.param_specs(cfg), models.param_shapes(cfg),
                                          is_leaf=spec.is_spec)
