"""HyperCloning and other function-preserving growth of annotated param pytrees.

    from hyperinit import cloning, models
    cfg = models.get_config('gpt2-tiny')
    big, big_cfg = cloning.clone_model(params, cfg, cloning.factors_for(2), rng=jax.random.key(0))

Low level (any annotated pytree, no model config needed)::

    big = cloning.clone(params, specs, {'embed': 2, 'mlp': 2, 'heads': 2},
                        variant='noisy_symmetric', rng=key, snr_db=10.0)

See docs/cloning.md for the rules, the variants and the extras (optimizer
state, depth growth, symmetry diagnostic).
"""

from hyperinit.cloning.config import (clone_config, clone_model, describe, nonstandard_reasons,
                                      plan_model, source_sizes)
from hyperinit.cloning.depth import (grow_depth, grow_depth_config, grow_depth_model,
                                     grow_depth_opt_state)
from hyperinit.cloning.factors import (KV_RULES, NON_WIDENABLE, factors_between, factors_for,
                                       resolve_factors)
from hyperinit.cloning.noise import NOISE_DISTS
from hyperinit.cloning.optim import (grad_scale, update_multipliers, widen_like_gradient,
                                     widen_opt_state)
from hyperinit.cloning.symmetry import symmetry, symmetry_fn, symmetry_summary
from hyperinit.cloning.plan import TIE_MODES, VARIANTS, ClonePlan, LeafPlan, make_plan
from hyperinit.cloning.widen import apply_plan, clone, clone_fn, dst_shardings

__all__ = ['KV_RULES', 'NOISE_DISTS', 'NON_WIDENABLE', 'TIE_MODES', 'VARIANTS', 'ClonePlan',
           'LeafPlan', 'apply_plan', 'clone', 'clone_config', 'clone_fn', 'clone_model',
           'describe', 'dst_shardings', 'factors_between', 'factors_for', 'grad_scale', 'grow_depth',
           'grow_depth_config', 'grow_depth_model', 'grow_depth_opt_state',
           'make_plan', 'nonstandard_reasons', 'plan_model',
           'resolve_factors', 'source_sizes', 'symmetry', 'symmetry_fn',
           'symmetry_summary', 'update_multipliers', 'widen_like_gradient',
           'widen_opt_state']
