"""muP / µTransfer for annotated JAX models (Tensor Programs V, arXiv 2203.03466).

    from hyperinit import models, mup
    base = models.get_config('gpt2-tiny')                       # the tuned proxy
    target = models.get_config('gpt2-tiny', embed_dim=512, mlp_dim=2048)
    cfg = mup.mup_config(target, base)                         # logits x 1/m, 1/d attention
    mults = mup.config_multipliers(cfg, base)                  # per-leaf classes and multipliers
    params = mup.init_params(cfg, rng, mults)                  # hidden var ~ 1/fan_in, zero readout
    tx = mup.adamw(schedule, weight_decay=0.1, mults=mults)   # optax.adamw's signature
    tx = mup.make_optimizer('adamw', schedule, mults, weight_decay=0.1, grad_clip=1.0)
    sp = mup.make_optimizer('adamw', schedule, None, weight_decay=0.1, grad_clip=1.0)  # SP
    hps = mup.BaseHParams(hidden_init_mult=2.0, output_mult=4.0)   # tuned on the base, kept
    # -> mup_config(..., **hps.forward_kwargs()), init_params(..., **hps.init_kwargs()),
    #    make_optimizer(..., lr_factors=hps.lr_factors(mults))

Everything is derived from the `ParamSpec` annotations; the multipliers are a
JSON-serialisable mapping (path -> class, fan-in/fan-out multipliers), and the
optimizer factors are static per path, so sharded (FSDP) updates just work.

Your own linen / NNX model: `width_multipliers(specs, shapes, base_specs=...,
base_shapes=...)` (the readout is found from its 'vocab' / 'classes' output
axis or its role, or named by `readout=`), `rescale_init(params, mults,
base_params=...)` (per-leaf std measured), `forward_fold` (output 1/m and 1/d
attention folded into the weights) and `coord_check(apply_fn, params, specs,
batch)`; docs/mup.md.
"""

import warnings

from hyperinit.mup.hparams import BaseHParams
from hyperinit.mup.init import (INIT_SCHEMES, init_factors, init_params, mup_config,
                                rescale_init)
from hyperinit.mup.optim import (KINDS, WD_MODES, adafactor, adam, adamw, decay_mask,
                                 eps_multipliers, factor_table, lion, make_optimizer, sgd)
from hyperinit.mup.transforms import (add_decayed_weights_per_leaf, leaf_factors,
                                      scale_by_adam_leaf_eps, scale_leaves, scale_per_leaf)
from hyperinit.mup.shapes import (CLASSES, LeafMult, Multipliers, class_counts,
                                  config_multipliers, summary, width_multipliers)
from hyperinit.mup.fold import forward_fold
from hyperinit.mup.coord_own import coord_check, linen_apply, nnx_apply

__all__ = [
    'BaseHParams', 'CLASSES', 'INIT_SCHEMES', 'KINDS', 'LeafMult', 'Multipliers', 'WD_MODES',
    'adafactor', 'adam', 'adamw', 'add_decayed_weights_per_leaf', 'class_counts',
    'config_multipliers', 'coord_check', 'decay_mask', 'eps_multipliers', 'factor_table',
    'forward_fold', 'init_factors', 'init_params', 'leaf_factors', 'linen_apply', 'lion',
    'make_optimizer', 'mup_config', 'nnx_apply', 'rescale_init', 'scale_by_adam_leaf_eps',
    'scale_leaves', 'scale_per_leaf', 'sgd', 'summary', 'width_multipliers',
]


# --- names kept one release with a DeprecationWarning (issue 30) ------------------------

def _lr_multipliers(mults, rule='adam'):
  return factor_table(mults, rule)


def _update_factors(mults, rule, lr_factors=None):
  return factor_table(mults, rule, lr_factors=lr_factors)


def _lr_tree(mults, like, rule='adam'):
  import jax  # pylint: disable=g-import-not-at-top
  from hyperinit import spec  # pylint: disable=g-import-not-at-top
  table = factor_table(mults, rule)
  return jax.tree_util.tree_map_with_path(lambda p, _: table[spec.path_str(p)], like)


def _scale_by_mup(mults, rule='adam'):
  import optax  # pylint: disable=g-import-not-at-top
  return optax.identity() if mults is None else scale_per_leaf(factor_table(mults, rule))


_DEPRECATED = {
    'lr_multipliers': (_lr_multipliers, 'mup.factor_table(mults, rule)'),
    'update_factors': (_update_factors, 'mup.factor_table(mults, rule, lr_factors=...)'),
    'lr_tree': (_lr_tree, 'spec.unflatten(mup.factor_table(mults, rule))'),
    'scale_by_mup': (_scale_by_mup, 'mup.scale_per_leaf(mup.factor_table(mults, rule))'),
}


def __getattr__(name):
  if name in _DEPRECATED:
    fn, instead = _DEPRECATED[name]
    warnings.warn(f'mup.{name} is deprecated and goes in the next release; use {instead}',
                  DeprecationWarning, stacklevel=2)
    return fn
  if name == 'chain':
    raise AttributeError('mup.chain is private now (it shadowed optax.chain with another '
                         'meaning): build optimizers with mup.adamw / adam / lion / sgd / '
                         'adafactor or mup.make_optimizer')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
