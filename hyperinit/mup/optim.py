"""muP optimizers as optax transforms: per-leaf learning-rate (and Adam epsilon) scaling.

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

Weight decay (`wd_mode`), with lr the scheduled rate and s the leaf's factor:

* 'width_invariant': the per-step decay is lr * wd for every leaf, at every
  width (microsoft/mup MuAdamW's default, which multiplies hidden wd by m).
  Implemented by placing the muP scale *before* `add_decayed_weights`.
* 'decoupled': the per-step decay is lr * s * wd (the decay shrinks with the
  leaf's learning rate; microsoft/mup's decoupled_wd=True with torch AdamW).
  The muP scale sits *after* `add_decayed_weights`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from hyperinit import spec as spec_lib
from hyperinit.mup.shapes import Multipliers

RULES = ('adam', 'sgd', 'adafactor_relative')
WD_MODES = ('width_invariant', 'decoupled')
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
  m_out = mults.readout_mult if mode == 'all' else 1.0
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


def _lookup(table: Mapping[str, float], path, what: str) -> float:
  key = spec_lib.path_str(path)
  try:
    return table[key]
  except KeyError:
    raise KeyError(f'no muP {what} for leaf {key!r}: the multipliers were built for another '
                   f'parameter tree (e.g. {sorted(table)[:3]})') from None


def scale_per_leaf(scales: Mapping[str, float], what: str = 'scale'
                   ) -> optax.GradientTransformation:
  """Multiplies each update leaf by a static per-path factor (1.0: left untouched)."""
  scales = dict(scales)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params

    def one(path, u):
      s = _lookup(scales, path, what)
      return u if s == 1.0 else u * s
    return jax.tree_util.tree_map_with_path(one, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_mup(mults: Multipliers | None, rule: str = 'adam') -> optax.GradientTransformation:
  """Per-leaf muP learning-rate factors; identity when `mults` is None (plain SP).

  Place it after the optimizer's normaliser (`scale_by_adam`, `scale_by_lion`,
  `clip_by_block_rms`, a momentum `trace`) and before `scale_by_learning_rate`;
  before `add_decayed_weights` for width-invariant decay, after it for decoupled.
  """
  if mults is None:
    return optax.identity()
  return scale_per_leaf(lr_multipliers(mults, rule), 'learning-rate multiplier')


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                  mu_dtype: Any = None, *, nesterov: bool = False,
                  eps_scales: Mapping[str, float] | None = None) -> optax.GradientTransformation:
  """`optax.scale_by_adam` with a per-leaf epsilon eps * eps_scales[path].

  Same state (`optax.ScaleByAdamState`) and, at eps_scales == 1, the same
  arithmetic as optax, so updates are bit-identical there.
  """
  if eps_scales is None:
    return optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)
  eps_scales = dict(eps_scales)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    mu = optax.tree.zeros_like(params, dtype=mu_dtype)
    nu = optax.tree.zeros_like(params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count_inc = optax.safe_increment(state.count)
    if nesterov:
      mu_hat = jax.tree.map(
          lambda m, g: b1 * m + (1 - b1) * g,
          optax.tree.bias_correction(mu, b1, optax.safe_increment(count_inc)),
          optax.tree.bias_correction(updates, b1, count_inc))
    else:
      mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
    nu_hat = optax.tree.bias_correction(nu, b2, count_inc)

    def one(path, m, v):
      e = eps * _lookup(eps_scales, path, 'epsilon multiplier')
      return m / (jnp.sqrt(v + eps_root) + e)
    updates = jax.tree_util.tree_map_with_path(one, mu_hat, nu_hat)
    mu = optax.tree.cast(mu, mu_dtype)
    nu = optax.tree.cast_like(nu, state.nu)
    return updates, optax.ScaleByAdamState(count=count_inc, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def _decayed(core: list, mup: optax.GradientTransformation, weight_decay, mask, wd_mode: str,
             learning_rate) -> optax.GradientTransformation:
  """chain(core..., [mup, decay] or [decay, mup], lr) by the weight-decay mode."""
  _check('wd_mode', wd_mode, WD_MODES)
  if weight_decay is None:
    tail = [mup]
  else:
    decay = optax.add_decayed_weights(weight_decay, mask)
    tail = [mup, decay] if wd_mode == 'width_invariant' else [decay, mup]
  return optax.chain(*core, *tail, optax.scale_by_learning_rate(learning_rate))


def _eps_scales(mults, eps_mode):
  return None if mults is None else eps_multipliers(mults, eps_mode)


def adamw(learning_rate, mults: Multipliers | None, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: Any = None,
          weight_decay=1e-4, mask=None, *, nesterov: bool = False,
          wd_mode: str = 'width_invariant', eps_mode: str = 'all') -> optax.GradientTransformation:
  """muP AdamW; `optax.adamw` (same defaults) when mults is None or at base width."""
  core = [scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov,
                        eps_scales=_eps_scales(mults, eps_mode))]
  return _decayed(core, scale_by_mup(mults, 'adam'), weight_decay, mask, wd_mode, learning_rate)


def adam(learning_rate, mults: Multipliers | None, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: Any = None, *,
         nesterov: bool = False, eps_mode: str = 'all') -> optax.GradientTransformation:
  """muP Adam; `optax.adam` when mults is None or at base width."""
  return adamw(learning_rate, mults, b1, b2, eps, eps_root, mu_dtype, None, None,
               nesterov=nesterov, eps_mode=eps_mode)


def lion(learning_rate, mults: Multipliers | None, b1: float = 0.9, b2: float = 0.99,
         mu_dtype: Any = None, weight_decay=1e-3, mask=None, *,
         wd_mode: str = 'width_invariant') -> optax.GradientTransformation:
  """muP Lion (sign updates of unit size: the Adam-like rule); `optax.lion` at base width."""
  core = [optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype)]
  return _decayed(core, scale_by_mup(mults, 'adam'), weight_decay, mask, wd_mode, learning_rate)


def sgd(learning_rate, mults: Multipliers | None, momentum: float | None = None,
        nesterov: bool = False, accumulator_dtype: Any = None, weight_decay=None, mask=None, *,
        wd_mode: str = 'width_invariant') -> optax.GradientTransformation:
  """muP SGD.  `optax.sgd` at base width when weight_decay is None; with weight
  decay it is SGDW (decay added after momentum, like AdamW), i.e.
  chain(trace, add_decayed_weights, scale_by_learning_rate) at base width.
  """
  core = []
  if momentum is not None:
    core.append(optax.trace(decay=momentum, nesterov=nesterov,
                            accumulator_dtype=accumulator_dtype))
  return _decayed(core, scale_by_mup(mults, 'sgd'), weight_decay, mask, wd_mode, learning_rate)


def adafactor(learning_rate=None, mults: Multipliers | None = None,
              min_dim_size_to_factor: int = 128, decay_rate: float = 0.8,
              decay_offset: int = 0, multiply_by_parameter_scale: bool = True,
              clipping_threshold: float | None = 1.0, momentum: float | None = None,
              dtype_momentum: Any = jnp.float32, weight_decay_rate=None, eps: float = 1e-30,
              factored: bool = True, weight_decay_mask=None, *,
              wd_mode: str = 'width_invariant') -> optax.GradientTransformation:
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
  'width_invariant' keeps it at wd per step, 'decoupled' scales it by s.
  """
  _check('wd_mode', wd_mode, WD_MODES)
  mup = scale_by_mup(mults, 'adafactor_relative' if multiply_by_parameter_scale else 'adam')
  tx = [optax.scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor,
                                    eps)]
  if clipping_threshold is not None:
    tx.append(optax.clip_by_block_rms(clipping_threshold))
  if wd_mode == 'width_invariant':
    tx.append(mup)
  if learning_rate is not None:
    tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  if multiply_by_parameter_scale:
    tx.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    tx.append(optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
  if weight_decay_rate is not None:
    tx.append(optax.add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
  if wd_mode == 'decoupled':
    tx.append(mup)
  tx.append(optax.scale(-1))
  return optax.chain(*tx)


_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    'adam': adam, 'adamw': adamw, 'lion': lion, 'sgd': sgd, 'adafactor': adafactor}


def make_optimizer(kind: str, learning_rate, mults: Multipliers | None = None, *,
                   grad_clip: float | None = None, **kwargs) -> optax.GradientTransformation:
  """One entry point for trainers: `kind` in KINDS, optional global-norm clipping first.

  `learning_rate` may be an optax schedule.  `mults=None` gives the plain optax
  optimizer (standard parametrisation) through the same code path.  Extra
  keyword arguments go to the builder (b1, b2, eps, weight_decay, wd_mode,
  eps_mode, momentum, ...).
  """
  _check('optimizer kind', kind, KINDS)
  tx = _BUILDERS[kind](learning_rate, mults, **kwargs)
  if grad_clip is not None:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx


def lr_tree(mults: Multipliers, like: Any, rule: str = 'adam') -> Any:
  """The learning-rate factors as a pytree shaped like `like` (for logging)."""
  table = lr_multipliers(mults, rule)
  return jax.tree_util.tree_map_with_path(lambda p, _: _lookup(table, p, 'lr'), like)
