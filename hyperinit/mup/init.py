"""muP initialisation and forward multipliers.

Initialisation ("Table 8" of arXiv 2203.03466, relative to the base model):

* hidden and bottleneck leaves: variance proportional to 1/fan_in, i.e. the
  base std times fan_in_m^-1/2;
* input-like leaves (embeddings, first layer) and vectors: width-independent
  (Flax's default `nn.Embed` init, std 1/sqrt(features), is *not*: pass
  init_scheme='fan_out' for such leaves and they are rescaled back);
* the readout: zero (recommended) or the base width's init;
* optionally zero queries (role 'query'), so attention starts uniform.

`rescale_init` turns a standard init drawn at the *target* width into that,
leaf by leaf, given how the standard init scales with width: measured from the
same model's init at the base width (`base_params=`, any initializer) or
named (`init_scheme=`).
At base width every factor is 1 (except the explicit zero options).

Forward multipliers go through the model config (`mup_config`): logits
x output_mult/m, attention logits x attn_mult/d_head, embeddings x embed_mult,
residual branches x L_m^-alpha for depth transfer.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from hyperinit import models
from hyperinit import spec as spec_lib
from hyperinit.user_model import as_key
from hyperinit.mup.shapes import Multipliers, config_multipliers
from hyperinit.mup.transforms import scale_leaves

INIT_SCHEMES = ('normal', 'fan_in', 'fan_out')
READOUT_INITS = ('zero', 'base', 'keep')


def _want(v, readout: str) -> float | None:
  """muP's std of one leaf relative to the base width's (None: keep the leaf as drawn)."""
  if v.cls in ('hidden', 'bottleneck'):
    return 1.0 / math.sqrt(v.fan_in_mult)
  if v.cls == 'output':
    return {'zero': 0.0, 'keep': None, 'base': 1.0}[readout]
  return 1.0                        # input, vector, finite: width-independent


def _hp_mult(v, hidden_init_mult: float, readout_init_mult: float) -> float:
  if v.cls in ('hidden', 'bottleneck'):
    return hidden_init_mult
  return readout_init_mult if v.cls == 'output' else 1.0


def _check_choices(init_scheme, readout):
  for name, val, allowed in (('init_scheme', init_scheme, INIT_SCHEMES),
                             ('readout', readout, READOUT_INITS)):
    if val not in allowed:
      raise ValueError(f'{name}={val!r} is not supported; expected one of {list(allowed)}')


def init_factors(mults: Multipliers, *, init_scheme: str,
                 scheme_overrides: Mapping[str, str] | None = None, readout: str = 'zero',
                 zero_query: bool = False, hidden_init_mult: float = 1.0,
                 readout_init_mult: float = 1.0) -> dict[str, float]:
  """path -> factor applied to the standard init (0.0 means zero-initialised).

  Args:
    mults: the target's multipliers.
    init_scheme: how the standard init's std depends on width: 'normal' (fixed
      std, e.g. N(0, 0.02)), 'fan_in' (std ~ fan_in^-1/2, LeCun/He/PyTorch Linear),
      'fan_out' (std ~ fan_out^-1/2, Flax's default `nn.Embed`).  No default:
      for an initializer that is none of these (Xavier: ~ (fan_in + fan_out)^-1/2)
      use `rescale_init(..., base_params=...)`, which measures it.
    scheme_overrides: path -> scheme for leaves initialised differently.
    readout: 'zero', 'base' (std of the base width's init) or 'keep'.
    zero_query: zero every leaf with role 'query' (kernel and bias).
    hidden_init_mult, readout_init_mult: base hyper-parameters (`BaseHParams`):
      std of hidden and bottleneck leaves, and of the readout, x this at every
      width (the same number at the base and the target).
  """
  _check_choices(init_scheme, readout)
  overrides = dict(scheme_overrides or {})
  for p, s in overrides.items():
    if p not in mults.leaves:
      raise ValueError(f'scheme override for {p!r}, which is not a leaf of the multipliers')
    if s not in INIT_SCHEMES:
      raise ValueError(f'scheme override {s!r} for {p!r}; expected one of {list(INIT_SCHEMES)}')
  out = {}
  for path, v in mults.leaves.items():
    want = _want(v, readout)
    if zero_query and v.role == 'query':
      out[path] = 0.0
    elif want is None:
      out[path] = float(readout_init_mult)
    else:
      # How the standard init's std scales relative to the base width.
      grown = {'normal': 1.0, 'fan_in': 1.0 / math.sqrt(v.fan_in_mult),
               'fan_out': 1.0 / math.sqrt(v.fan_out_mult)}[overrides.get(path, init_scheme)]
      out[path] = float(want / grown * _hp_mult(v, hidden_init_mult, readout_init_mult))
  return out


def _rms(x) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def measured_init_factors(params: Any, base_params: Any, mults: Multipliers, *,
                          readout: str = 'zero', zero_query: bool = False,
                          hidden_init_mult: float = 1.0,
                          readout_init_mult: float = 1.0) -> dict[str, Any]:
  """path -> factor, from each leaf's RMS at the target and at the base (any initializer).

  muP's target for a leaf is its base-width init std times the class rule
  (hidden: fan_in_m^-1/2; input, vector, finite: x1; readout: 0 / x1 / keep),
  so the factor is want * rms(base leaf) / rms(target leaf): exact for
  lecun_normal, normal(0.02), Xavier, truncated normals, up to the sampling
  noise of the base leaf's RMS (relative 1/sqrt(2n) for n entries: 1.3% for a
  48 x 64 kernel).  A leaf that is constant at the base (zeros, ones) keeps its
  init.  Jittable (the factors are traced scalars); base_params must hold
  every target leaf (init the base at the target's depth for depth transfer).
  """
  _check_choices('normal', readout)
  flat_b = spec_lib.flatten(base_params)
  out = {}
  for path, x in spec_lib.flatten(params).items():
    v = mults[path]
    if path not in flat_b:
      raise ValueError(f'base_params has no leaf {path!r}: initialise the base with the same '
                       f'structure as the target (for depth transfer: the target depth)')
    want = _want(v, readout)
    if zero_query and v.role == 'query':
      out[path] = 0.0
    elif want is None:
      out[path] = float(readout_init_mult)
    elif want == 0.0:
      out[path] = 0.0
    else:
      rb, rt = _rms(flat_b[path]), _rms(x)
      f = want * _hp_mult(v, hidden_init_mult, readout_init_mult)
      # A constant leaf (std 0) keeps its init; otherwise match the base's RMS x want.
      const = jnp.std(flat_b[path].astype(jnp.float32)) == 0
      out[path] = jnp.where(const | (rt == 0), 1.0, f * rb / jnp.where(rt == 0, 1.0, rt))
  return out


def rescale_init(params: Any, mults: Multipliers, *, base_params: Any = None,
                 init_scheme: str | None = None, scheme_overrides: Mapping[str, str] | None = None,
                 **kwargs) -> Any:
  """muP init from a standard init at the target width.

  Tell it how that init scales with width, one of:
    base_params: the same model's standard init at the base width (recommended
      for your own models: every leaf's std is measured, `measured_init_factors`,
      exact for any initializer);
    init_scheme: 'normal' / 'fan_in' / 'fan_out' (`init_factors`).
  kwargs: readout ('zero', 'base', 'keep'), zero_query, hidden_init_mult,
  readout_init_mult.  Pure and jittable: params [any tree of arrays] -> same
  tree, each leaf times its factor (factor 1 returns the leaf, 0 exact zeros).
  """
  if (base_params is None) == (init_scheme is None):
    raise ValueError('rescale_init needs to know how your init scales with width: pass '
                     'base_params= (the same model initialised at the base width; each leaf\'s '
                     f'std is measured) or init_scheme= one of {list(INIT_SCHEMES)}, not both')
  if base_params is None:
    factors = init_factors(mults, init_scheme=init_scheme, scheme_overrides=scheme_overrides,
                           **kwargs)
    return scale_leaves(params, factors, 'init factor')
  if scheme_overrides:
    raise ValueError('scheme_overrides go with init_scheme=, not base_params=')
  factors = measured_init_factors(params, base_params, mults, **kwargs)

  def one(path, x):
    f = factors[spec_lib.path_str(path)]
    if isinstance(f, float):
      return x if f == 1.0 else (jnp.zeros_like(x) if f == 0.0 else x * jnp.asarray(f, x.dtype))
    return x * f.astype(x.dtype)
  return jax.tree_util.tree_map_with_path(one, params)


def init_params(cfg, rng: jax.Array | int, mults: Multipliers, *, readout: str = 'zero',
                zero_query: bool = False, hidden_init_mult: float = 1.0,
                readout_init_mult: float = 1.0) -> Any:
  """muP init of a hyperinit model: its standard init at `cfg`'s width, rescaled.

  The scheme is the config's own (`cfg.init`: 'normal' = N(0, init_std),
  'fan_in' = var 1/fan_in); the model's GPT-2 residual-output scale
  1/sqrt(2L) only depends on depth and is kept.  rng: a key, or an int seed.
  """
  params = models.init_params(cfg, as_key(rng))
  return rescale_init(params, mults, init_scheme=cfg.init, readout=readout,
                      zero_query=zero_query, hidden_init_mult=hidden_init_mult,
                      readout_init_mult=readout_init_mult)


def mup_config(cfg, base_cfg, *, output_mult: float | None = None,
               attn_mult: float | None = None, embed_mult: float | None = None,
               depth_alpha: float | None = None):
  """The target model config with muP's forward multipliers set.

  Args:
    cfg: target `TransformerConfig` / `ViTConfig` (the wide model).
    base_cfg: the base (narrow proxy) config the hyper-parameters are tuned on.
    output_mult: readout multiplier at base width (tunable); default
      base_cfg.logits_mult.  The target gets logits_mult = output_mult / m.
    attn_mult: attention multiplier with the muP 1/d_head scale (tunable);
      default sqrt(base d_head) * base attn_mult (so it equals 1/sqrt(d_head) at
      base width: muP == SP there), or base attn_mult if the base is already 'linear'.
    embed_mult: input embedding multiplier (tunable); default base_cfg.embed_mult.
    depth_alpha: residual branches x (L / L_base)^-alpha (0.5 depth-muP, 1.0
      CompleteP); None keeps the base residual_mult.  With depth transfer the
      GPT-2 1/sqrt(2L) residual init is switched off (the forward multiplier
      takes its place), for the base config too: train the base with
      `mup_config(base_cfg, base_cfg, depth_alpha=...)`.

  Returns:
    cfg with logits_mult, attn_scale='linear', attn_mult, embed_mult,
    residual_mult (and scale_residual_init) set.
  """
  mults = config_multipliers(cfg, base_cfg, depth_alpha=depth_alpha)
  m = mults.readout_width_mult
  if output_mult is None:
    output_mult = base_cfg.logits_mult
  if attn_mult is None:
    attn_mult = base_cfg.attn_mult * (math.sqrt(base_cfg.d_head)
                                      if base_cfg.attn_scale == 'sqrt' else 1.0)
  if embed_mult is None:
    embed_mult = base_cfg.embed_mult
  kw: dict[str, Any] = dict(logits_mult=output_mult / m, attn_scale='linear',
                            attn_mult=float(attn_mult), embed_mult=embed_mult)
  if depth_alpha is not None:
    kw['residual_mult'] = base_cfg.residual_mult * mults.depth_mult ** (-depth_alpha)
    if hasattr(cfg, 'scale_residual_init'):
      kw['scale_residual_init'] = False
  return cfg.replace(**kw)
