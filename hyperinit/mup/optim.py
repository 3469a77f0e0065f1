"""muP optimizers: one chain (`chain`), one constructor (`make_optimizer`), muP's rules.

    tx = make_optimizer('adamw', schedule, mults, grad_clip=1.0, weight_decay=0.1, mask=mask)
    tx = make_optimizer('adamw', schedule, None, ...)   # standard parametrisation: optax.adamw

The per-leaf factors are static Python floats keyed by the leaf's path, so a
jitted update with sharded parameters needs nothing special (no metadata rides
on the arrays).  At base width every factor is exactly 1 and the chains below
produce bit-identical updates to their plain optax counterparts.

Learning-rate multipliers ("Table 8" of Tensor Programs V, arXiv 2203.03466;
m = target/base width of the named dims):

=============  ================  ==========================  =========================
class          Adam-like rule    SGD rule                    Adafactor, relative step
=============  ================  ==========================  =========================
input, vector  1                 fan_out_m                   1
hidden         1 / fan_in_m      fan_out_m / fan_in_m        1 / sqrt(fan_in_m)
bottleneck     1 / fan_in_m      1                           1 / sqrt(fan_in_m)
output         1                 fan_in_m                    1
finite         1                 1                           1
=============  ================  ==========================  =========================

Depth transfer (when the `Multipliers` carry depth_alpha = alpha, residual
branches x L_m^-alpha with L_m = depth / base depth): every leaf inside a
residual block gets an extra L_m^(alpha-1) for Adam-like rules (CompleteP,
Dey et al. 2025, arXiv 2505.01618; depth-muP, Yang et al. 2023,
arXiv 2310.02244, Adam LR / sqrt(L)) and L_m^(2 alpha - 1) for SGD (so each
block's feature update stays Theta(1/L)).

Weight decay: one story for every optimizer.  `weight_decay` means what it
means in torch (so each builder matches a microsoft/mup optimizer): decoupled
(added to the update after the direction, times the learning rate) for adamw,
lion and adafactor (whose decay optax does not multiply by lr); coupled L2
(added to the gradient before the direction) for adam and sgd.  `wd_mode` says whether the decay follows the leaf's update
factor s (muP's learning-rate multiplier times any `lr_factors`):

* 'fixed' (default): the per-step decay is lr * wd for every leaf at every
  width, as if s did not touch it: decoupled decay sits after the factors, and
  coupled decay uses the rate wd / s.  This is microsoft/mup's default
  (decoupled_wd=False), which divides each param group's weight_decay by the
  factor it multiplies the group's lr by (hidden Adam wd x m).
* 'follows_lr': the per-step decay is lr * s * wd: decoupled decay sits before
  the factors, coupled decay uses the rate wd.  This is microsoft/mup's
  decoupled_wd=True with torch's AdamW / Adam / SGD, whose decay is
  multiplied by the group's lr.

docs/mup.md has the table (which call equals which microsoft/mup setting).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from hyperinit import spec as spec_lib
from hyperinit.mup.shapes import Multipliers
from hyperinit.mup.transforms import (add_decayed_weights_per_leaf, leaf_factors, lookup,
                                      scale_by_adam_leaf_eps, scale_per_leaf)

RULES = ('adam', 'sgd', 'adafactor_relative')
WD_MODES = ('fixed', 'follows_lr')
EPS_MODES = ('all', 'hidden', 'none')
KINDS = ('adam', 'adamw', 'lion', 'sgd', 'adafactor')


def _check(name, value, allowed):
  if value not in allowed:
    raise ValueError(f'{name}={value!r} is not supported; expected one of {list(allowed)}')


def lr_multipliers(mults: Multipliers, rule: str = 'adam') -> dict[str, float]:
  """Learning-rate factor of every leaf, path -> float (see the module table)."""
  _check('rule', rule, RULES)
  alpha = mults.depth_alpha
  out = {}
  for path, v in mults.leaves.items():
    if rule == 'sgd':
      w = {'input': v.fan_out_mult, 'vector': v.fan_out_mult,
           'hidden': v.fan_out_mult / v.fan_in_mult, 'output': v.fan_in_mult,
           'bottleneck': 1.0, 'finite': 1.0}[v.cls]
      d = mults.depth_factor(2 * alpha - 1) if (v.in_block and alpha is not None) else 1.0
    else:
      w = 1.0
      if v.cls in ('hidden', 'bottleneck'):
        w = 1.0 / (v.fan_in_mult if rule == 'adam' else math.sqrt(v.fan_in_mult))
      d = mults.depth_factor(alpha - 1) if (v.in_block and alpha is not None) else 1.0
    out[path] = float(w * d)
  return out


def eps_multipliers(mults: Multipliers, mode: str = 'all') -> dict[str, float]:
  """Adam epsilon factor of every leaf, path -> float.

  Under muP every gradient that passes through the readout's 1/m forward
  multiplier shrinks like 1/m (all leaves with an infinite dim; the check is
  `tests/mup_test.py::test_gradient_scale_matches_eps_rule`), so a fixed eps
  would come to dominate sqrt(v) as width grows.  Modes:

  * 'all': eps / m_readout for every leaf with an infinite dim (what the
    CompleteP reference does globally), finite leaves keep eps;
  * 'hidden': eps / fan_in_m for hidden and bottleneck leaves only;
  * 'none': eps unchanged (microsoft/mup).

  With depth transfer, leaves in residual blocks also get L_m^-alpha (their
  gradients carry the branch multiplier).
  """
  _check('eps_mode', mode, EPS_MODES)
  alpha = mults.depth_alpha
  m_out = mults.readout_width_mult if mode == 'all' else 1.0
  out = {}
  for path, v in mults.leaves.items():
    e = 1.0
    if mode == 'all' and v.cls != 'finite':
      e = 1.0 / m_out
    elif mode == 'hidden' and v.cls in ('hidden', 'bottleneck'):
      e = 1.0 / v.fan_in_mult
    if mode != 'none' and v.in_block and alpha is not None:
      e *= mults.depth_factor(-alpha)
    out[path] = float(e)
  return out


def scale_by_mup(mults: Multipliers | None, rule: str = 'adam') -> optax.GradientTransformation:
  """Per-leaf muP learning-rate factors; identity when `mults` is None (plain SP).

  Place it after the optimizer's normaliser (`scale_by_adam_leaf_eps`,
  `scale_by_lion`, `clip_by_block_rms`, a momentum `trace`) and before
  `scale_by_learning_rate`; before `add_decayed_weights` for wd_mode='fixed',
  after it for 'follows_lr'.
  """
  if mults is None:
    return optax.identity()
  return scale_per_leaf(lr_multipliers(mults, rule), 'learning-rate multiplier')


def decay_mask(specs: Any = None, params: Any = None) -> Any:
  """True for leaves that get weight decay: matrices and embeddings.

  Args:
    specs: ParamSpec tree; a leaf with fan-in axes that is not a norm parameter decays.
    params: used when specs is None: leaves of rank >= 2 decay.

  Returns:
    A tree of bools shaped like specs / params.  Biases, norm gains and the ViT
    class token are never decayed.
  """
  if specs is not None:
    return jax.tree.map(lambda s: bool(s.fan_in) and s.role not in ('norm', 'final_norm'),
                        specs, is_leaf=spec_lib.is_spec)
  if params is None:
    raise ValueError('decay_mask needs specs or params')
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def chain(direction: Sequence[optax.GradientTransformation], learning_rate, *,
          factors: Mapping[str, float] | None = None, wd_mode: str = 'fixed',
          decoupled_decay=None, coupled_decay=None, mask=None,
          grad_clip: float | None = None,
          relative_step: Sequence[optax.GradientTransformation] | None = None
          ) -> optax.GradientTransformation:
  """The one optimizer chain (a flat `optax.chain`, so its state is a flat tuple):

      [clip_by_global_norm] -> [coupled decay] -> direction
        -> fixed:      [factors] -> [decoupled decay]
           follows_lr: [decoupled decay] -> [factors]
        -> scale_by_learning_rate(learning_rate)

  Args:
    direction: the base optimizer's normaliser (scale_by_adam, a momentum
      trace, scale_by_lion, Adafactor's factored RMS + block clipping); may be empty.
    learning_rate: float or optax schedule (ignored with `relative_step`).
    factors: per-leaf update factors s {path: float} (muP's learning-rate
      multipliers times any extra ones), or None.
    wd_mode: whether the decay follows s (module doc, "Weight decay"):
      'fixed': the per-step decay is lr * wd for every leaf (decoupled decay
      after the factors; coupled decay at rate wd / s);
      'follows_lr': lr * s * wd (decoupled decay before the factors; coupled
      decay at rate wd, then normalised and scaled with the gradient).
    decoupled_decay: AdamW-style rate (added to the update after the
      direction), or None.
    coupled_decay: L2 rate (added to the gradient before the direction, as
      torch's Adam and SGD `weight_decay`), or None.
    mask: weight-decay mask (tree or callable).
    grad_clip: global-norm clipping threshold, or None.
    relative_step: Adafactor's tail (optax.adafactor's order, which these
      reproduce exactly): these transforms (lr without sign flip, RMS(param),
      momentum) replace the final learning rate, go after 'fixed' factors
      and before the decay, and the chain ends in scale(-1), so the decay is
      not multiplied by the learning rate.
  """
  _check('wd_mode', wd_mode, WD_MODES)
  parts = [] if grad_clip is None else [optax.clip_by_global_norm(grad_clip)]
  if coupled_decay is not None:
    rates = None
    if factors is not None and wd_mode == 'fixed':
      zero = sorted(k for k, v in factors.items() if v == 0.0)
      if zero:
        raise ValueError(f"wd_mode='fixed' with coupled decay divides the rate by each leaf's "
                         f'update factor, which is 0 for {zero[:3]}')
      rates = {k: 1.0 / v for k, v in factors.items()}
    parts.append(add_decayed_weights_per_leaf(coupled_decay, rates, mask))
  parts += list(direction)
  scale = [] if factors is None else [scale_per_leaf(factors, 'learning-rate multiplier')]
  pre, post = (scale, []) if wd_mode == 'fixed' else ([], scale)
  decay = [] if decoupled_decay is None else [optax.add_decayed_weights(decoupled_decay, mask)]
  if relative_step is None:
    parts += pre + decay + post + [optax.scale_by_learning_rate(learning_rate)]
  else:
    parts += pre + list(relative_step) + decay + post + [optax.scale(-1)]
  return optax.chain(*parts)


def update_factors(mults: Multipliers | None, rule: str, lr_factors: Any = None
                   ) -> dict[str, float] | None:
  """Per-leaf update factors: muP's (by `rule`) times any extra `lr_factors`; None when neither.

  lr_factors: {path: float} or a params-shaped tree of floats (e.g.
  `BaseHParams.lr_factors(mults)` or `cloning.update_multipliers(plan)`); with
  muP it must name every leaf.
  """
  if mults is None and lr_factors is None:
    return None
  if lr_factors is None:
    return lr_multipliers(mults, rule)
  extra = leaf_factors(lr_factors)
  if mults is None:
    return extra
  table = lr_multipliers(mults, rule)
  missing = sorted(set(table) - set(extra))
  if missing:
    raise KeyError(f'lr_factors has no factor for leaves {missing[:3]}')
  return {k: v * extra[k] for k, v in table.items()}


def _eps_scales(mults, eps_mode):
  return None if mults is None else eps_multipliers(mults, eps_mode)


def _adam_direction(mults, b1, b2, eps, eps_root, mu_dtype, nesterov, eps_mode):
  return [scale_by_adam_leaf_eps(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov,
                                 eps_scales=_eps_scales(mults, eps_mode))]


def adamw(learning_rate, mults: Multipliers | None, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: Any = None,
          weight_decay=1e-4, mask=None, *, nesterov: bool = False, wd_mode: str = 'fixed',
          eps_mode: str = 'all', grad_clip=None, lr_factors: Any = None
          ) -> optax.GradientTransformation:
  """muP AdamW (decoupled decay: microsoft/mup's MuAdamW); `optax.adamw` (same defaults)
  when mults is None or at base width.  grad_clip, lr_factors: see `make_optimizer`."""
  return chain(_adam_direction(mults, b1, b2, eps, eps_root, mu_dtype, nesterov, eps_mode),
               learning_rate, factors=update_factors(mults, 'adam', lr_factors),
               wd_mode=wd_mode, decoupled_decay=weight_decay, mask=mask, grad_clip=grad_clip)


def adam(learning_rate, mults: Multipliers | None, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: Any = None, weight_decay=None,
         mask=None, *, nesterov: bool = False, wd_mode: str = 'fixed', eps_mode: str = 'all',
         grad_clip=None, lr_factors: Any = None) -> optax.GradientTransformation:
  """muP Adam; `weight_decay` is coupled L2 (torch's Adam; microsoft/mup's MuAdam).  Without
  decay it is `optax.adam` at base width; with it, chain(add_decayed_weights, optax.adam)."""
  return chain(_adam_direction(mults, b1, b2, eps, eps_root, mu_dtype, nesterov, eps_mode),
               learning_rate, factors=update_factors(mults, 'adam', lr_factors),
               wd_mode=wd_mode, coupled_decay=weight_decay, mask=mask, grad_clip=grad_clip)


def lion(learning_rate, mults: Multipliers | None, b1: float = 0.9, b2: float = 0.99,
         mu_dtype: Any = None, weight_decay=1e-3, mask=None, *, wd_mode: str = 'fixed',
         grad_clip=None, lr_factors: Any = None) -> optax.GradientTransformation:
  """muP Lion (sign updates of unit size: the Adam-like rule; decoupled decay as optax's);
  `optax.lion` at base width."""
  return chain([optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype)], learning_rate,
               factors=update_factors(mults, 'adam', lr_factors), wd_mode=wd_mode,
               decoupled_decay=weight_decay, mask=mask, grad_clip=grad_clip)


def sgd(learning_rate, mults: Multipliers | None, momentum: float | None = None,
        nesterov: bool = False, accumulator_dtype: Any = None, weight_decay=None, mask=None, *,
        wd_mode: str = 'fixed', grad_clip=None, lr_factors: Any = None
        ) -> optax.GradientTransformation:
  """muP SGD; `weight_decay` is coupled L2 added to the gradient before momentum (torch's
  SGD; microsoft/mup's MuSGD).  `optax.sgd` at base width without decay; with it,
  chain(add_decayed_weights, optax.sgd)."""
  direction = [] if momentum is None else [
      optax.trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)]
  return chain(direction, learning_rate, factors=update_factors(mults, 'sgd', lr_factors),
               wd_mode=wd_mode, coupled_decay=weight_decay, mask=mask, grad_clip=grad_clip)


def adafactor(learning_rate=None, mults: Multipliers | None = None,
              min_dim_size_to_factor: int = 128, decay_rate: float = 0.8,
              decay_offset: int = 0, multiply_by_parameter_scale: bool = True,
              clipping_threshold: float | None = 1.0, momentum: float | None = None,
              dtype_momentum: Any = jnp.float32, weight_decay_rate=None, eps: float = 1e-30,
              factored: bool = True, weight_decay_mask=None, *, wd_mode: str = 'fixed',
              grad_clip=None, lr_factors: Any = None) -> optax.GradientTransformation:
  """muP Adafactor; `optax.adafactor` (same defaults and chain) at base width.

  The factored second moment normalises each entry to Theta(1) like Adam (its
  row and column statistics are means, so they do not grow with width), and
  update clipping acts on the per-leaf RMS, also width-free: the Adam-like rule
  applies, inserted after clipping.  With `multiply_by_parameter_scale` (the
  relative step size) the step is already multiplied by RMS(W), which under
  muP init is fan_in_m^-1/2 smaller for hidden leaves, so they get the
  remaining 1/sqrt(fan_in_m) ('adafactor_relative' rule).  This assumes the
  muP init (`hyperinit.mup.init`) and that the update stays small next to the
  init, as muP arranges.  Set `min_dim_size_to_factor` <= the base width so
  that the base and the target factor the same leaves.  optax's Adafactor adds
  its decay after the learning rate (the decay is not multiplied by lr):
  'fixed' keeps it at wd per step, 'follows_lr' scales it by s.
  """
  rule = 'adafactor_relative' if multiply_by_parameter_scale else 'adam'
  direction = [optax.scale_by_factored_rms(factored, decay_rate, decay_offset,
                                           min_dim_size_to_factor, eps)]
  if clipping_threshold is not None:
    direction.append(optax.clip_by_block_rms(clipping_threshold))
  step = [] if learning_rate is None else [
      optax.scale_by_learning_rate(learning_rate, flip_sign=False)]
  if multiply_by_parameter_scale:
    step.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    step.append(optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
  return chain(direction, learning_rate, factors=update_factors(mults, rule, lr_factors),
               wd_mode=wd_mode, decoupled_decay=weight_decay_rate, mask=weight_decay_mask,
               grad_clip=grad_clip, relative_step=step)


_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    'adam': adam, 'adamw': adamw, 'lion': lion, 'sgd': sgd, 'adafactor': adafactor}


def make_optimizer(kind: str, learning_rate, mults: Multipliers | None = None, *,
                   grad_clip: float | None = None, lr_factors: Any = None,
                   **kwargs) -> optax.GradientTransformation:
  """The one optimizer constructor: `chain` for `kind` in KINDS.

  Args:
    kind: 'adam', 'adamw', 'lion', 'sgd' or 'adafactor' (the builders above).
    learning_rate: float or optax schedule.
    mults: muP `Multipliers` (per-leaf learning rates and Adam epsilons, see
      the module doc), or None for the standard parametrisation (the plain
      optax optimizer, through the same code path).
    grad_clip: global-norm clipping threshold, first in the chain, or None.
    lr_factors: extra static per-leaf update factors ({path: float} or a
      params-shaped tree of floats, e.g. muP's `BaseHParams.lr_factors(mults)`
      or `cloning.update_multipliers(plan)`), multiplied into muP's; they sit
      where muP's factors do and count as part of s for `wd_mode`.
    **kwargs: the builder's own (b1, b2, eps, weight_decay, mask, wd_mode,
      eps_mode, momentum, nesterov, ...).  `weight_decay` is decoupled for
      adamw, lion (and adafactor's weight_decay_rate), coupled L2 for adam and
      sgd, as in torch and microsoft/mup (module doc, "Weight decay").

  Returns:
    A flat optax chain: `tx.update(grads, state, params)` -> (updates, state),
    updates shaped like params.
  """
  _check('optimizer kind', kind, KINDS)
  return _BUILDERS[kind](learning_rate, mults, grad_clip=grad_clip, lr_factors=lr_factors,
                         **kwargs)


def lr_tree(mults: Multipliers, like: Any, rule: str = 'adam') -> Any:
  """The learning-rate factors as a pytree shaped like `like` (for logging)."""
  table = lr_multipliers(mults, rule)
  return jax.tree_util.tree_map_with_path(lambda p, _: lookup(table, p, 'lr'), like)
