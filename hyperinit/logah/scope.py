"""Which predicted leaves a fine-tuning run starts from: all of them, or only the model's ends.

    start = restrict(predicted, models.init_params(target, key), target, 'io')

Scopes:
  'all'  every leaf as predicted (the method as published).
  'io'   the leaves outside the repeated blocks as predicted (token / patch
         embedding, position table, class token, final norm, readout); every
         leaf of the blocks from `fallback` (the model's own random init).

Why 'io' exists (measured, docs/results.md "Where the benefit lives"): a CPU-scale
GPT GHN's predicted blocks are a poor place to fine-tune from, whatever their
scale or added noise, while its predicted embeddings and readout carry its
head start.
"""

from __future__ import annotations

import re
from typing import Any

from hyperinit import models, spec as spec_lib
from hyperinit.logah.graph import is_scanned
from hyperinit.models.config import ModelConfig

SCOPES = ('all', 'io')
_BLOCK = re.compile(r'^(block_\d+|blocks)(/|$)')


def in_blocks(path: str, spec: spec_lib.ParamSpec) -> bool:
  """Whether the leaf at `path` ('/'-joined) belongs to the repeated blocks: scanned leaves
  (leading 'layers' axis) and the leaves under 'block_<i>' / 'blocks'."""
  return is_scanned(spec) or bool(_BLOCK.match(path))


def restrict(predicted: Any, fallback: Any, target: ModelConfig, scope: str) -> Any:
  """predicted's leaves inside `scope`, fallback's elsewhere (both trees shaped like target's
  params; 'all' returns `predicted` itself)."""
  if scope not in SCOPES:
    raise ValueError(f'predicted-leaf scope {scope!r} is not one of {SCOPES}')
  if scope == 'all':
    return predicted
  specs = spec_lib.flatten(models.param_specs(target), is_leaf=spec_lib.is_spec)
  pred, fall = spec_lib.flatten(predicted), spec_lib.flatten(fallback)
  for name, tree in (('predicted', pred), ('fallback', fall)):
    if set(tree) != set(specs):
      raise ValueError(f'{name} params do not match the leaves of {type(target).__name__}: '
                       f'missing {sorted(set(specs) - set(tree))[:5]}, '
                       f'unexpected {sorted(set(tree) - set(specs))[:5]}')
  return spec_lib.unflatten({p: fall[p] if in_blocks(p, specs[p]) else pred[p] for p in specs})
