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
leaf by leaf, given how the standard init scales with width (`init_scheme`).
At base width every factor is 1 (except the explicit zero options).

Forward multipliers go through the model config (`mup_config`): logits
x output_mult/m, attention logits x attn_mult/d_head, embeddings x embed_mult,
residual branches x L_m^-alpha for depth transfer.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax

from hyperinit import models
from hyperinit.mup.shapes import Multipliers, config_multipliers
from hyperinit.mup.transforms import scale_leaves

INIT_SCHEMES = ('normal', 'fan_in', 'fan_out')
READOUT_INITS = ('zero', 'base', 'keep')


def _std_factor(v, scheme: str, readout: str) -> float:
  """Factor turning the standard init of one leaf at target width into muP init."""
  # How the standard init's std scales relative to the base width.
  grown = {'normal': 1.0, 'fan_in': 1.0 / math.sqrt(v.fan_in_mult),
           'fan_out': 1.0 / math.sqrt(v.fan_out_mult)}[scheme]
  if v.cls in ('hidden', 'bottleneck'):
    want = 1.0 / math.sqrt(v.fan_in_mult)
  elif v.cls == 'output':
    if readout == 'zero':
      return 0.0
    if readout == 'keep':
      return 1.0
    want = 1.0                      # the base width's init, width-independent
  else:                             # input, vector, finite: width-independent
    want = 1.0
  return want / grown


def init_factors(mults: Multipliers, *, init_scheme: str = 'normal',
                 scheme_overrides: Mapping[str, str] | None = None, readout: str = 'zero',
                 zero_query: bool = False, hidden_init_mult: float = 1.0,
                 readout_init_mult: float = 1.0) -> dict[str, float]:
  """path -> factor applied to the standard init (0.0 means zero-initialised).

  Args:
    mults: the target's multipliers.
    init_scheme: how the standard init's std depends on width: 'normal' (fixed
      std, e.g. N(0, 0.02)), 'fan_in' (std ~ fan_in^-1/2, LeCun/He/PyTorch Linear),
      'fan_out' (std ~ fan_out^-1/2, Flax's default `nn.Embed`).
    scheme_overrides: path -> scheme for leaves initialised differently.
    readout: 'zero', 'base' (std of the base width's init) or 'keep'.
    zero_query: zero every leaf with role 'query' (kernel and bias).
    hidden_init_mult, readout_init_mult: base hyper-parameters (`BaseHParams`):
      std of hidden and bottleneck leaves, and of the readout, x this at every
      width (the same number at the base and the target).
  """
  for name, val, allowed in (('init_scheme', init_scheme, INIT_SCHEMES),
                             ('readout', readout, READOUT_INITS)):
    if val not in allowed:
      raise ValueError(f'{name}={val!r} is not supported; expected one of {list(allowed)}')
  overrides = dict(scheme_overrides or {})
  for p, s in overrides.items():
    if p not in mults.leaves:
      raise ValueError(f'scheme override for {p!r}, which is not a leaf of the multipliers')
    if s not in INIT_SCHEMES:
      raise ValueError(f'scheme override {s!r} for {p!r}; expected one of {list(INIT_SCHEMES)}')
  out = {}
  for path, v in mults.leaves.items():
    if zero_query and v.role == 'query':
      out[path] = 0.0
    else:
      f = _std_factor(v, overrides.get(path, init_scheme), readout)
      if v.cls in ('hidden', 'bottleneck'):
        f *= hidden_init_mult
      elif v.cls == 'output':
        f *= readout_init_mult
      out[path] = float(f)
  return out


def rescale_init(params: Any, mults: Multipliers, **kwargs) -> Any:
  """muP init from a standard init at the target width (see `init_factors` for kwargs).

  Pure and jittable: params [any tree of arrays] -> same tree, each leaf times
  its factor (`scale_leaves`: factor 1 returns the leaf, 0 exact zeros).
  """
  return scale_leaves(params, init_factors(mults, **kwargs), 'init factor')


def init_params(cfg, rng: jax.Array, mults: Multipliers, *, readout: str = 'zero',
                zero_query: bool = False, hidden_init_mult: float = 1.0,
                readout_init_mult: float = 1.0) -> Any:
  """muP init of a hyperinit model: its standard init at `cfg`'s width, rescaled.

  The scheme is the config's own (`cfg.init`: 'normal' = N(0, init_std),
  'fan_in' = var 1/fan_in); the model's GPT-2 residual-output scale
  1/sqrt(2L) only depends on depth and is kept.
  """
  params = models.init_params(cfg, rng)
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
