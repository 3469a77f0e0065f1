"""muP's forward multipliers folded into the weights, for models you did not write for muP.

muP multiplies the readout's x.W by output_mult/m, uses attn/d instead of
1/sqrt(d) attention scores and may scale the embeddings.  hyperinit's own
models take these through their config (`mup_config`).  A user's linen or NNX
model need not change: each multiplier c is folded into the weight it follows
(W -> c W), which is exact for the function at every step when the optimizer
knows about it (`adamw(..., folded=fold)` and the other builders):

* the forward pass: x.(cW) = c (x.W), so the logits are muP's;
* Adam, AdamW, Lion: the gradient of cW is g/c and the Adam direction is
  scale-free, so the update is lr x s x c (the weight moves c x as far, i.e. the
  same in W terms) and Adam's eps is divided by c (sqrt(v) shrank by c);
* SGD: the update is lr x s x c^2;
* weight decay: decoupled decay after the factors ('fixed') is already right;
  'follows_lr' divides its rate by c, coupled L2 by c^2.

Two things are not exact: global-norm clipping sees the folded leaves' g/c (so
it clips at another point when it triggers), and Adafactor (not supported).
The readout's bias is not scaled (microsoft/mup's MuReadout scales x.W only).

    fold = mup.forward_fold(mults)                    # {path: c}
    params = mup.scale_leaves(mup.rescale_init(params, mults, base_params=base), fold)
    tx = mup.adamw(lr, weight_decay=0.1, mults=mults, folded=fold)
"""

from __future__ import annotations

import math
from typing import Iterable

from hyperinit.mup.shapes import Multipliers


def _sibling_bias(path: str, leaves) -> list[str]:
  head, _, _ = path.rpartition('/')
  bias = f'{head}/bias' if head else 'bias'
  return [bias] if bias in leaves and bias != path else []


def forward_fold(mults: Multipliers, *, output_mult: float = 1.0, attn_scale: float = 1.0,
                 embed_mult: float = 1.0, head_dim_axis: str = 'head_dim',
                 query: Iterable[str] | None = None) -> dict[str, float]:
  """path -> c: muP's forward multipliers as weight factors for a standard-parametrised model.

  Args:
    mults: the target's `Multipliers` (readout found, see `width_multipliers`).
    output_mult: the readout multiplier at base width (a base hyper-parameter);
      the readout kernel (class 'output') gets c = output_mult / m.
    attn_scale: attention scores x this relative to 1/sqrt(d_head) at base
      width.  Your model divides q.k by sqrt(d_head) (Flax's
      `dot_product_attention`); muP wants attn_scale x sqrt(base d) / d, so the
      query kernel and its bias get c = attn_scale / sqrt(m_head_dim).
    embed_mult: leaves with role 'embedding' or 'position' get c = embed_mult.
    head_dim_axis: the logical axis of the head dimension.
    query: paths of the query kernels; default: leaves annotated role 'query'.

  Returns:
    {path: c} for every leaf (1.0 where nothing is folded): multiply the init
    by it (`scale_leaves`) and pass it to the optimizer as `folded=`.

  Raises:
    ValueError: a tied embedding with output_mult / m != 1 (the shared table
    cannot take two factors: apply the logits multiplier in the forward pass),
    or a head-dim axis that grows with no query leaf to fold 1/d into.
  """
  leaves = mults.leaves
  out = {p: 1.0 for p in leaves}
  if any(v.role == 'tied_embedding' for v in leaves.values()):
    c = output_mult / mults.readout_width_mult
    if c != 1.0:
      raise ValueError(f'tied embeddings: the logits multiplier {c:g} cannot be folded into the '
                       'shared table; multiply the logits by it in your forward pass')
  else:
    c = output_mult / mults.readout_width_mult
    for p, v in leaves.items():
      if v.cls == 'output':
        out[p] *= c
  m_hd = mults.axis_mults.get(head_dim_axis, 1.0)
  queries = [p for p, v in leaves.items() if v.role == 'query'] if query is None else list(query)
  unknown = sorted(set(queries) - set(leaves))
  if unknown:
    raise ValueError(f'query paths {unknown} are not leaves of the multipliers')
  qc = attn_scale / math.sqrt(m_hd)
  if qc != 1.0 and not queries:
    raise ValueError(f'the attention needs x{qc:g} ({head_dim_axis!r} grows x{m_hd:g}) but no '
                     "leaf has role 'query': annotate the query kernel with role='query' or "
                     'pass query=[paths]')
  for p in queries:
    for q in [p] + _sibling_bias(p, leaves):
      out[q] *= qc
  for p, v in leaves.items():
    if v.role in ('embedding', 'position'):
      out[p] *= embed_mult
  return out
