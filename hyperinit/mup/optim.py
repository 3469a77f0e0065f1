"""muP optimizers shaped like optax's, one constructor (`make_optimizer`), muP's rules.

    tx = adamw(schedule, b2=0.95, weight_decay=0.1, mults=mults)   # optax.adamw's signature
    tx = make_optimizer('adamw', schedule, mults, grad_clip=1.0, weight_decay=0.1, mask=mask)
    tx = make_optimizer('adamw', schedule, None, ...)   # standard parametrisation: optax.adamw

Each builder (`adamw`, `adam`, `lion`, `sgd`, `adafactor`) takes the optax
function's exact positional signature; muP's extras are keyword-only
(`mults`, `wd_mode`, `eps_mode`, `grad_clip`, `lr_factors`, `folded`).  optax's
`adam` and `sgd` have no weight decay, so theirs here is named for what it is:
`l2_coupled=` (L2 added to the gradient, torch's Adam / SGD `weight_decay`).
All builders share one private chain (`_chain`).

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

Weight decay: one story for every optimizer.  Each builder matches a
microsoft/mup optimizer: decoupled decay (added to the update after the
direction, times the learning rate) is `weight_decay` of adamw and lion and
`weight_decay_rate` of adafactor (whose decay optax does not multiply by lr);
coupled L2 (added to the gradient before the direction) is `l2_coupled` of adam
and sgd.  `make_optimizer(kind, ..., weight_decay=)` means what torch's
`weight_decay` means for that kind (coupled for adam and sgd).  `wd_mode` says
whether the decay follows the leaf's update factor s (muP's learning-rate
multiplier times any `lr_factors`):

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
from hyperinit.mup.transforms import (add_decayed_weights_per_leaf, leaf_factors,
                                      scale_by_adam_leaf_eps, scale_per_leaf)

RULES = ('adam', 'sgd', 'adafactor_relative')
WD_MODES = ('fixed', 'follows_lr')
EPS_MODES = ('all', 'hidden', 'none')
KINDS = ('adam', 'adamw', 'lion', 'sgd', 'adafactor')


def _check(name, value, allowed):
  if value not in allowed:
    raise ValueError(f'{name}={value!r} is not supported; expected one of {list(allowed)}')


def _mup_rule(mults: Multipliers, rule: str) -> dict[str, float]:
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


def factor_table(mults: Multipliers | None, rule: str = 'adam', *,
                 lr_factors: Any = None) -> dict[str, float] | None:
  """The per-leaf update factor s of every leaf, {path: float} (see the module table).

  The one factor-table function: muP's learning-rate multiplier for `rule`
  ('adam' for Adam, AdamW, Lion; 'sgd'; 'adafactor_relative') times any extra
  `lr_factors` ({path: float} or a params-shaped tree of floats, e.g.
  `BaseHParams.lr_factors(mults)` or `cloning.update_multipliers(plan)`; with
  muP it must name every leaf).  None when mults and lr_factors are both None
  (plain SP).  For logging as a tree: `spec.unflatten(factor_table(mults))`.
  """
  _check('rule', rule, RULES)
  if mults is None:
    return None if lr_factors is None else leaf_factors(lr_factors)
  table = _mup_rule(mults, rule)
  if lr_factors is None:
    return table
  extra = leaf_factors(lr_factors)
  missing = sorted(set(table) - set(extra))
  if missing:
    raise KeyError(f'lr_factors has no factor for leaves {missing[:3]}')
  return {k: v * extra[k] for k, v in table.items()}


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


def _mul(a: Mapping[str, float] | None, b: Mapping[str, float] | None, what: str):
  """Leafwise product of two factor tables (None = all ones)."""
  if a is None or b is None:
    return b if a is None else a
  missing = sorted(set(a) - set(b))
  if missing:
    raise KeyError(f'{what} has no factor for leaves {missing[:3]}')
  return {k: v * b[k] for k, v in a.items()}


def _chain(direction: Sequence[optax.GradientTransformation], learning_rate, *,
           factors: Mapping[str, float] | None = None, wd_mode: str = 'fixed',
           decoupled_decay=None, coupled_decay=None, mask=None,
           grad_clip: float | None = None,
           relative_step: Sequence[optax.GradientTransformation] | None = None,
           folded: Mapping[str, float] | None = None, fold_power: int = 1
           ) -> optax.GradientTransformation:
  """The one optimizer chain behind every builder (a flat `optax.chain`):

      [clip_by_global_norm] -> [coupled decay] -> direction
        -> fixed:      [factors] -> [decoupled decay]
           follows_lr: [decoupled decay] -> [factors]
        -> scale_by_learning_rate(learning_rate)

  factors: the update factors s {path: float} or None.  wd_mode: 'fixed' (per-step
  decay lr * wd: decoupled decay after the factors, coupled at rate wd / s) or
  'follows_lr' (lr * s * wd).  relative_step: Adafactor's tail (optax.adafactor's
  order), replacing the final learning rate; the chain then ends in scale(-1).
  folded: forward multipliers c folded into the weights (`fold.forward_fold`): the
  update of such a leaf is x c^fold_power (1 for Adam-like, 2 for SGD) and its decay
  rates are corrected so that the trajectory is c x the unfolded one.
  """
  _check('wd_mode', wd_mode, WD_MODES)
  if folded is not None and not set(folded.values()) <= {1.0}:
    if relative_step is not None:
      raise ValueError('folded forward multipliers are not supported with Adafactor')
    fold_lr = {k: v ** fold_power for k, v in folded.items()}
    fold_decay = {k: 1.0 / v for k, v in folded.items()}
  else:
    fold_lr = fold_decay = None
  total = _mul(factors, fold_lr, 'folded')
  parts = [] if grad_clip is None else [optax.clip_by_global_norm(grad_clip)]
  if coupled_decay is not None:
    rates = None
    if factors is not None and wd_mode == 'fixed':
      zero = sorted(k for k, v in factors.items() if v == 0.0)
      if zero:
        raise ValueError(f"wd_mode='fixed' with coupled decay divides the rate by each leaf's "
                         f'update factor, which is 0 for {zero[:3]}')
      rates = {k: 1.0 / v for k, v in factors.items()}
    # A weight folded by c sees gradients / c: the L2 rate / c^2 keeps g + r w in proportion.
    rates = _mul(rates, None if fold_decay is None else
                 {k: v * v for k, v in fold_decay.items()}, 'folded')
    parts.append(add_decayed_weights_per_leaf(coupled_decay, rates, mask))
  parts += list(direction)
  scale = [] if total is None else [scale_per_leaf(total, 'learning-rate multiplier')]
  decay = []
  if decoupled_decay is not None:
    # 'follows_lr' decays before the factors, which hold c: rate / c keeps lr * s * wd.
    rates = fold_decay if wd_mode == 'follows_lr' else None
    decay = [add_decayed_weights_per_leaf(decoupled_decay, rates, mask)]
  pre, post = (scale, []) if wd_mode == 'fixed' else ([], scale)
  if relative_step is None:
    parts += pre + decay + post + [optax.scale_by_learning_rate(learning_rate)]
  else:
    parts += pre + list(relative_step) + decay + post + [optax.scale(-1)]
  return optax.chain(*parts)


def _no_positional_mults(fn: str, value) -> None:
  """The old builders took `mults` second; optax's signature puts a float there."""
  if value is None or isinstance(value, Multipliers):
    raise TypeError(f'mup.{fn}: the second positional argument is optax\'s ({value!r} given); '
                    f'muP multipliers are keyword-only now: mup.{fn}(lr, ..., mults=mults)')


def _folded(folded):
  return None if folded is None else leaf_factors(folded)


def _adam_chain(fn, learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, mults, eps_mode,
                lr_factors, folded, **decay) -> optax.GradientTransformation:
  """adam and adamw: per-leaf eps (muP's, and / c for folded leaves) and the chain."""
  _no_positional_mults(fn, b1)
  folded = _folded(folded)
  scales = None if mults is None else eps_multipliers(mults, eps_mode)
  if folded is not None and not set(folded.values()) <= {1.0}:
    # A weight folded by c sees gradients / c, so sqrt(v) / c: eps / c keeps the ratio.
    inv = {k: 1.0 / v for k, v in folded.items()}
    scales = inv if scales is None else _mul(scales, inv, 'folded')
  direction = [scale_by_adam_leaf_eps(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov,
                                      eps_scales=scales)]
  return _chain(direction, learning_rate,
                factors=factor_table(mults, 'adam', lr_factors=lr_factors), folded=folded,
                **decay)


def adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, mu_dtype: Any = None,
          weight_decay=1e-4, mask=None, *, nesterov: bool = False,
          mults: Multipliers | None = None, wd_mode: str = 'fixed', eps_mode: str = 'all',
          grad_clip=None, lr_factors: Any = None, folded: Any = None
          ) -> optax.GradientTransformation:
  """muP AdamW: `optax.adamw`'s signature, muP's extras keyword-only.

  Decoupled decay (microsoft/mup's MuAdamW); `optax.adamw` itself, bit for bit,
  when mults is None or at base width.  mults: `Multipliers` (None: SP);
  wd_mode, eps_mode: the module doc; grad_clip, lr_factors: see `make_optimizer`;
  folded: {path: c} from `forward_fold` (forward multipliers folded into the weights).
  """
  return _adam_chain('adamw', learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, mults,
                     eps_mode, lr_factors, folded, wd_mode=wd_mode, decoupled_decay=weight_decay,
                     mask=mask, grad_clip=grad_clip)


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, mu_dtype: Any = None, *,
         nesterov: bool = False, mults: Multipliers | None = None, l2_coupled=None, mask=None,
         wd_mode: str = 'fixed', eps_mode: str = 'all', grad_clip=None, lr_factors: Any = None,
         folded: Any = None) -> optax.GradientTransformation:
  """muP Adam: `optax.adam`'s signature, muP's extras keyword-only.

  l2_coupled: L2 rate added to the gradient before Adam (torch's Adam
  `weight_decay`; microsoft/mup's MuAdam), on the `mask` leaves; optax.adam has
  no decay.  Without it, `optax.adam` at base width; with it,
  chain(add_decayed_weights, optax.adam).  Other extras: see `adamw`.
  """
  return _adam_chain('adam', learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, mults,
                     eps_mode, lr_factors, folded, wd_mode=wd_mode, coupled_decay=l2_coupled,
                     mask=mask, grad_clip=grad_clip)


def lion(learning_rate, b1=0.9, b2=0.99, mu_dtype: Any = None, weight_decay=1e-3, mask=None, *,
         mults: Multipliers | None = None, wd_mode: str = 'fixed', grad_clip=None,
         lr_factors: Any = None, folded: Any = None) -> optax.GradientTransformation:
  """muP Lion: `optax.lion`'s signature (sign updates of unit size: the Adam-like rule;
  decoupled decay as optax's); `optax.lion` at base width.  Extras: see `adamw`."""
  _no_positional_mults('lion', b1)
  return _chain([optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype)], learning_rate,
                factors=factor_table(mults, 'adam', lr_factors=lr_factors), wd_mode=wd_mode,
                decoupled_decay=weight_decay, mask=mask, grad_clip=grad_clip,
                folded=_folded(folded))


def sgd(learning_rate, momentum=None, nesterov: bool = False, accumulator_dtype: Any = None, *,
        mults: Multipliers | None = None, l2_coupled=None, mask=None, wd_mode: str = 'fixed',
        grad_clip=None, lr_factors: Any = None, folded: Any = None
        ) -> optax.GradientTransformation:
  """muP SGD: `optax.sgd`'s signature, muP's extras keyword-only.

  l2_coupled: L2 rate added to the gradient before momentum (torch's SGD
  `weight_decay`; microsoft/mup's MuSGD).  `optax.sgd` at base width without it;
  with it, chain(add_decayed_weights, optax.sgd).  Other extras: see `adamw`.
  """
  if isinstance(momentum, Multipliers):
    _no_positional_mults('sgd', momentum)
  direction = [] if momentum is None else [
      optax.trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)]
  return _chain(direction, learning_rate,
                factors=factor_table(mults, 'sgd', lr_factors=lr_factors), wd_mode=wd_mode,
                coupled_decay=l2_coupled, mask=mask, grad_clip=grad_clip,
                folded=_folded(folded), fold_power=2)


def adafactor(learning_rate=None, min_dim_size_to_factor: int = 128, decay_rate=0.8,
              decay_offset=0, multiply_by_parameter_scale: bool = True,
              clipping_threshold=1.0, momentum=None, dtype_momentum: Any = jnp.float32,
              weight_decay_rate=None, eps=1e-30, factored: bool = True, weight_decay_mask=None,
              *, mults: Multipliers | None = None, wd_mode: str = 'fixed', grad_clip=None,
              lr_factors: Any = None) -> optax.GradientTransformation:
  """muP Adafactor: `optax.adafactor`'s signature (same defaults and chain at base width).

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
  if isinstance(min_dim_size_to_factor, Multipliers):
    _no_positional_mults('adafactor', min_dim_size_to_factor)
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
  return _chain(direction, learning_rate,
                factors=factor_table(mults, rule, lr_factors=lr_factors), wd_mode=wd_mode,
                decoupled_decay=weight_decay_rate, mask=weight_decay_mask, grad_clip=grad_clip,
                relative_step=step)


_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    'adam': adam, 'adamw': adamw, 'lion': lion, 'sgd': sgd, 'adafactor': adafactor}


def make_optimizer(kind: str, learning_rate, mults: Multipliers | None = None, *,
                   grad_clip: float | None = None, lr_factors: Any = None,
                   **kwargs) -> optax.GradientTransformation:
  """The one optimizer constructor: the builder for `kind` in KINDS.

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
    **kwargs: the builder's own (b1, b2, eps, mask, wd_mode, eps_mode, momentum,
      nesterov, folded, ...).  `weight_decay` means torch's: decoupled for adamw
      and lion (adafactor: weight_decay_rate), coupled L2 (`l2_coupled=`) for adam
      and sgd, as in microsoft/mup (module doc, "Weight decay").

  Returns:
    A flat optax chain: `tx.update(grads, state, params)` -> (updates, state),
    updates shaped like params.
  """
  _check('optimizer kind', kind, KINDS)
  if kind in ('adam', 'sgd') and 'weight_decay' in kwargs:
    kwargs['l2_coupled'] = kwargs.pop('weight_decay')
  return _BUILDERS[kind](learning_rate, mults=mults, grad_clip=grad_clip,
                         lr_factors=lr_factors, **kwargs)
