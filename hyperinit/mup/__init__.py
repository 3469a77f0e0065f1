"""muP / µTransfer for annotated JAX models (Tensor Programs V, arXiv 2203.03466).

    from hyperinit import models, mup
    base = models.get_config('gpt2-tiny')                       # the tuned proxy
    target = models.get_config('gpt2-tiny', embed_dim=512, mlp_dim=2048)
    cfg = mup.mup_config(target, base)                         # logits x 1/m, 1/d attention
    mults = mup.config_multipliers(cfg, base)                  # per-leaf classes and multipliers
    params = mup.init_params(cfg, rng, mults)                  # hidden var ~ 1/fan_in, zero readout
    tx = mup.make_optimizer('adamw', schedule, mults, weight_decay=0.1, grad_clip=1.0)
    sp = mup.make_optimizer('adamw', schedule, None, weight_decay=0.1, grad_clip=1.0)  # SP
    hps = mup.BaseHParams(hidden_init_mult=2.0, output_mult=4.0)   # tuned on the base, kept
    # -> mup_config(..., **hps.forward_kwargs()), init_params(..., **hps.init_kwargs()),
    #    make_optimizer(..., lr_factors=hps.lr_factors(mults))

Everything is derived from the `ParamSpec` annotations; the multipliers are a
JSON-serialisable mapping (path -> class, fan-in/fan-out multipliers), and the
optimizer factors are static per path, so sharded (FSDP) updates just work.
"""

from hyperinit.mup.hparams import BaseHParams
from hyperinit.mup.init import (INIT_SCHEMES, init_factors, init_params, mup_config,
                                rescale_init)
from hyperinit.mup.optim import (KINDS, WD_MODES, adafactor, adam, adamw, chain, decay_mask,
                                 eps_multipliers, lion, lr_multipliers, lr_tree, make_optimizer,
                                 scale_by_mup, sgd, update_factors)
from hyperinit.mup.transforms import (add_decayed_weights_per_leaf, leaf_factors,
                                      scale_by_adam_leaf_eps, scale_leaves, scale_per_leaf)
from hyperinit.mup.shapes import (CLASSES, LeafMult, Multipliers, class_counts,
                                  config_multipliers, summary, width_multipliers)

__all__ = [
    'BaseHParams', 'CLASSES', 'INIT_SCHEMES', 'KINDS', 'LeafMult', 'Multipliers', 'WD_MODES',
    'adafactor', 'adam', 'adamw', 'add_decayed_weights_per_leaf', 'chain', 'class_counts',
    'config_multipliers', 'decay_mask', 'eps_multipliers', 'init_factors', 'init_params',
    'leaf_factors', 'lion', 'lr_multipliers', 'lr_tree', 'make_optimizer', 'mup_config',
    'rescale_init', 'scale_by_adam_leaf_eps', 'scale_by_mup', 'scale_leaves', 'scale_per_leaf',
    'sgd', 'summary', 'update_factors', 'width_multipliers',
]
