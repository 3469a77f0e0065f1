"""muP's base hyper-parameters: tuned on the base model, carried unchanged to every width.

µTransfer (Tensor Programs V, arXiv 2203.03466, Sec. 4 and Table 2) transfers
more than the learning rate: the init multipliers, the forward multipliers of
the readout, the attention and the embeddings, and per-class learning-rate
multipliers are all "base" hyper-parameters.  They are set once, at the base
width, and every wider model uses the same values; muP's width rules (init,
forward 1/m, per-leaf LR) act on top of them.  With every field at its default
muP at base width is the standard parametrisation exactly.

    hps = BaseHParams(hidden_init_mult=2.0, output_mult=4.0, input_lr_mult=0.5)
    cfg = mup.mup_config(target, base, **hps.forward_kwargs())
    mults = mup.config_multipliers(cfg, base)
    params = mup.init_params(cfg, key, mults, readout='base', **hps.init_kwargs())
    tx = mup.make_optimizer('adamw', lr, mults, lr_factors=hps.lr_factors(mults))

Why each one exists: SP at width w with its own best LR *is* muP at w with
some base HPs (`sp_equivalent`), so a muP sweep that leaves them at SP's
width-64 values is compared with an SP that tunes them implicitly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

from hyperinit.mup.shapes import Multipliers

# Which per-class LR multiplier each muP leaf class takes.  The readout bias
# (class 'finite', no width dim) is vector-like, as in microsoft/mup (ninf() < 2).
LR_CLASS = {'input': 'input_lr_mult', 'vector': 'vector_lr_mult', 'finite': 'vector_lr_mult',
            'hidden': 'hidden_lr_mult', 'bottleneck': 'hidden_lr_mult',
            'output': 'output_lr_mult'}


@dataclasses.dataclass(frozen=True)
class BaseHParams:
  """The tunable muP base hyper-parameters (all dimensionless multipliers).

  Attributes:
    output_mult: readout forward multiplier at base width; the model's
      logits are x output_mult / m.  None: the base config's logits_mult.
    attn_mult: attention logits x attn_mult / d_head.  None: sqrt(base
      d_head) x base attn_mult (= 1/sqrt(d_head) at base width, SP's scale).
    embed_mult: input embeddings x embed_mult.  None: the base config's.
    hidden_init_mult: std of hidden and bottleneck kernels x this (on top
      of muP's fan_in_m^-1/2).
    readout_init_mult: std of the readout kernel x this (with readout init
      'base' or 'keep'; a zero readout stays zero).
    input_lr_mult, hidden_lr_mult, output_lr_mult, vector_lr_mult: learning
      rate x this for the leaves of that class (vector also covers the
      finite readout bias, hidden also the bottleneck kernels).
  """
  output_mult: float | None = None
  attn_mult: float | None = None
  embed_mult: float | None = None
  hidden_init_mult: float = 1.0
  readout_init_mult: float = 1.0
  input_lr_mult: float = 1.0
  hidden_lr_mult: float = 1.0
  output_lr_mult: float = 1.0
  vector_lr_mult: float = 1.0

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ValueError(f'BaseHParams.{f.name}={v!r}: expected a positive finite number'
                         + (' or None' if f.default is None else ''))

  # --- where each group goes ------------------------------------------------------------

  def forward_kwargs(self) -> dict[str, float | None]:
    """Keyword arguments of `mup_config`: output_mult, attn_mult, embed_mult."""
    return {'output_mult': self.output_mult, 'attn_mult': self.attn_mult,
            'embed_mult': self.embed_mult}

  def init_kwargs(self) -> dict[str, float]:
    """Keyword arguments of `init_factors` / `rescale_init` / `init_params`."""
    return {'hidden_init_mult': float(self.hidden_init_mult),
            'readout_init_mult': float(self.readout_init_mult)}

  def lr_factors(self, mults: Multipliers) -> dict[str, float]:
    """path -> this leaf's class LR multiplier; pass as `make_optimizer(lr_factors=...)`."""
    return {p: float(getattr(self, LR_CLASS[v.cls])) for p, v in mults.leaves.items()}

  # --- (de)serialisation -------------------------------------------------------------------

  def to_dict(self) -> dict[str, float | None]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'BaseHParams':
    """From a mapping with any subset of the fields (others: defaults); unknown keys raise."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'unknown muP base hyper-parameters {unknown}; expected some of '
                       f'{sorted(names)}')
    return cls(**{k: (None if v is None else float(v)) for k, v in d.items()})

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'BaseHParams':
    return cls.from_dict(json.loads(text))

  # --- the SP correspondence ---------------------------------------------------------------

  @classmethod
  def sp_equivalent(cls, m: float, base_d_head: int) -> 'BaseHParams':
    """The base HPs for which muP at width m x base *is* SP at that width (Adam).

    For a model with a fixed-std init ('normal'), untied readout with
    readout init 'base', widths growing through head_dim (heads fixed) and
    Adam without epsilon scaling (eps_mode='none'): muP at width m x base with
    these HPs and learning rate m x lr computes the same function at init and
    makes the same updates as SP at that width with learning rate lr
    (`tests/mup_test.py::test_sp_equals_mup_with_sp_equivalent_base_hps`).

    hidden init x sqrt(m) undoes muP's fan_in^-1/2; readout init x m undoes the
    logits' 1/m; attention x sqrt(m) turns 1/d back into 1/sqrt(d); input and
    vector LR x 1/m bring them back to SP's lr (muP gives them m x lr);
    hidden and readout LRs already match (muP's 1/m and the 1/m forward).
    """
    if m <= 0:
      raise ValueError(f'width multiplier m={m} must be positive')
    return cls(attn_mult=math.sqrt(base_d_head) * math.sqrt(m), hidden_init_mult=math.sqrt(m),
               readout_init_mult=float(m), input_lr_mult=1.0 / m, vector_lr_mult=1.0 / m)
