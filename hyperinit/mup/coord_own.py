"""Coordinate check of your own linen or NNX model (Tensor Programs V, Sec. D.1).

    apply_fn = mup.linen_apply(lambda w: Net(w))              # or mup.nnx_apply(...)
    params = lambda w, key: spec.unbox(Net(w).init(key, x)['params'])
    specs = lambda w: spec.specs_from_boxed(jax.eval_shape(Net(w).init, key0, x)['params'])
    res = mup.coord_check(apply_fn, params, specs, (x, y), widths=(64, 128, 256, 512))
    res.slopes()    # {layer: [slope at t = 1, 2, 3]}: |slope| <= 0.07 means flat

muP is built from the annotations alone: `width_multipliers` (readout found
or a clear error), `rescale_init(base_params=)` (the init std measured per
leaf), `forward_fold` (output 1/m, attention 1/d folded into the weights) and
the muP optimizer with `folded=`, which is what a user's training does too.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from hyperinit.mup import coord
from hyperinit.mup import fold as mup_fold
from hyperinit.mup import init as mup_init
from hyperinit.mup import shapes, transforms


def nnx_apply(model_at: Callable[[int], Any]) -> Callable[..., tuple[jax.Array, dict]]:
  """`apply_fn(width, params, x) -> (y, {module path: output})` for an NNX model.

  model_at(width) builds the module (any rngs: only its structure is used);
  params is the pure dict of its `nnx.Param`s (`nnx.split(m, nnx.Param)[1].to_pure_dict()`).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  graphs: dict[int, Any] = {}

  def apply(width, params, x):
    if width not in graphs:
      graphdef, state, rest = nnx.split(nnx.eval_shape(lambda: model_at(width)), nnx.Param, ...)
      graphs[width] = (graphdef, state, rest)
    graphdef, state, rest = graphs[width]
    state = jax.tree.map(lambda v: v, state)
    nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state, rest)
    y, inter = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
    return y, coord._flatten_intermediates(inter.to_pure_dict())
  return apply


def linen_apply(module_at: Callable[[int], nn.Module]) -> Callable[..., tuple[jax.Array, dict]]:
  """`apply_fn(width, params, x) -> (y, {module path: output})` for a linen model."""
  return lambda width, params, x: coord.apply_with_acts(module_at(width), params, x)


def coord_check(apply_fn: Callable[[int, Any, Any], Any], params: Callable[[int, jax.Array], Any],
                specs: Callable[[int], Any], batch: Any, *,
                widths: Sequence[int] = (64, 128, 256, 512), base_width: int | None = None,
                param: str = 'mup', optimizer: str = 'adam', lr: float = 0.01, steps: int = 3,
                seeds: Sequence[int] = (0, 1, 2), readout: Sequence[str] | None = None,
                readout_init: str = 'zero', output_mult: float = 1.0, attn_scale: float = 1.0,
                loss_fn: Callable[[jax.Array, Any], jax.Array] | None = None) -> coord.CoordResult:
  """Coordinate check of your own model, muP-parametrised from its annotations.

  Each argument is a function of the width, so the check can build the model at
  every width (and at the base):

  Args:
    apply_fn: (width, params, x) -> logits, or (logits, {layer: activation});
      `linen_apply(lambda w: Net(w))` / `nnx_apply(...)` capture every submodule.
    params: (width, key) -> the model's standard init (plain arrays, e.g.
      `spec.unbox(Net(w).init(key, x)['params'])`); jittable.
    specs: width -> the `ParamSpec` tree.
    batch: (x, labels), fixed across steps.
    widths: widths to compare; base_width: muP's base (default: the smallest).
    param: 'mup' (`width_multipliers` against the base and a 2 x base delta,
      `rescale_init(base_params=)` measured on the model's own init,
      `forward_fold`, the muP optimizer with `folded=`) or 'sp' (the model as is).
    optimizer: 'adam' or 'sgd'; lr its learning rate.
    readout: readout paths if the annotations do not say (`width_multipliers`).
    readout_init, output_mult, attn_scale: muP's readout init and base multipliers.
    loss_fn: (logits, labels) -> scalar; default softmax cross-entropy with
      integer labels.

  Returns:
    `CoordResult`: mean |activation| per layer ('output' = logits) at t = 1..steps
    per width, `.slopes()` of log mean |act| against log width (flat under muP).
  """
  coord._check_param(param)
  base = int(min(widths) if base_width is None else base_width)
  loss_fn = loss_fn or coord._xent
  key0 = jax.random.key(0)
  abstract = {}

  def tree_at(w):
    if w not in abstract:
      abstract[w] = (specs(w), jax.eval_shape(lambda k: params(w, k), key0))
    return abstract[w]

  def make(width: int) -> CoordSetup:
    mults = fold = None
    if param == 'mup':
      s, p = tree_at(width)
      bs, bp = tree_at(base)
      ds, dp = tree_at(2 * base)
      mults = shapes.width_multipliers(s, p, base_specs=bs, base_shapes=bp, delta_specs=ds,
                                       delta_shapes=dp, readout=readout)
      fold = mup_fold.forward_fold(mults, output_mult=output_mult, attn_scale=attn_scale)

    def init(key):
      kt, kb = jax.random.split(key)
      p = params(width, kt)
      if mults is None:
        return p
      p = mup_init.rescale_init(p, mults, base_params=params(base, kb), readout=readout_init)
      return transforms.scale_leaves(p, fold, 'fold factor')

    def loss_and_acts(p, b):
      out = apply_fn(width, p, b[0])
      logits, acts = out if isinstance(out, tuple) else (out, {})
      acts = {k: v for k, v in acts.items() if k != 'output'}
      acts['output'] = logits
      return loss_fn(logits, b[1]), acts
    tx = coord._optimizer(optimizer, lr, mults, folded=fold)
    return coord.CoordSetup(init, tx, loss_and_acts, lambda key: batch)
  return coord.run_setups(make, widths, steps=steps, seeds=seeds)
