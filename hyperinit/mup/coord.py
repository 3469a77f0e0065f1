"""Coordinate check (Tensor Programs V, Sec. D.1): are activations width-independent?

For each width, train a few steps on a fixed batch and record the mean
absolute value of every layer's output at t = 1..steps (t = 1 is the init,
t = k is after k-1 updates).  Under muP every curve is flat in width; under
SP with Adam the logits and hidden activations grow (slope ~ +1 by t = 3).

    res = run_setups(mlp_setup('mup', 'adam', lr=0.01), widths=(64, 128, 256, 512))
    res.slopes()      # {layer: [slope at t=1, t=2, t=3]} of log mean|act| vs log width
    plots.coord_grid({'muP Adam': res, ...}, 'coord.png')   # hyperinit.studies.plots

Activations are read with Flax's `capture_intermediates` (every submodule's
`__call__` output, Dropout excluded) or NNX's `nnx.capture(method_outputs=)`,
so any linen or NNX model works unchanged (`coord_own`: `coord_check` on your model).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperinit import models
from hyperinit import spec as spec_lib
from hyperinit.mup import init as mup_init
from hyperinit.mup import optim, shapes
from hyperinit.mup.mlp import MLP


class CoordSetup(NamedTuple):
  """One width: how to draw params and a batch from a key, the optimizer, the loss.

  `init(key) -> params`, `batch(key) -> batch` (both jittable);
  `loss_and_acts(params, batch) -> (scalar loss, {layer: activation array})`.
  """
  init: Callable[[jax.Array], Any]
  tx: optax.GradientTransformation
  loss_and_acts: Callable[[Any, Any], tuple[jax.Array, dict[str, jax.Array]]]
  batch: Callable[[jax.Array], Any]


@dataclasses.dataclass
class CoordResult:
  """Mean |activation| per layer: acts[layer] has shape [steps, len(widths)] (seed-averaged)."""
  widths: tuple[int, ...]
  acts: dict[str, np.ndarray]
  losses: np.ndarray          # [steps, len(widths)], seed-averaged training loss

  @property
  def steps(self) -> int:
    return next(iter(self.acts.values())).shape[0]

  def slopes(self) -> dict[str, np.ndarray]:
    """layer -> [steps] slope of log mean|act| against log width (nan where an act is 0)."""
    x = np.log(np.asarray(self.widths, np.float64))
    out = {}
    for name, a in self.acts.items():
      s = np.full(a.shape[0], np.nan)
      for t in range(a.shape[0]):
        if np.all(np.isfinite(a[t])) and np.all(a[t] > 0):
          s[t] = np.polyfit(x, np.log(a[t]), 1)[0]
      out[name] = s
    return out

  def table(self) -> str:
    """Slope per layer and step as aligned text."""
    sl = self.slopes()
    w = max(len(k) for k in sl)
    head = f'{"layer":<{w}}  ' + '  '.join(f't={t + 1:<5d}' for t in range(self.steps))
    rows = [f'{k:<{w}}  ' + '  '.join('  zero ' if np.isnan(v) else f'{v:+.3f}' for v in s)
            for k, s in sl.items()]
    return '\n'.join([head] + rows)


def run_setups(make_setup: Callable[[int], CoordSetup], widths: Sequence[int], *,
               steps: int = 3, seeds: Sequence[int] = (0, 1, 2),
               fast_compile: bool = True) -> CoordResult:
  """Runs the coordinate check of setups (`mlp_setup`, `transformer_setup`, your own
  `CoordSetup`s; for your own model see `mup.coord_check`): per width, one jitted program
  (init, then `steps` train steps in a `lax.scan`, vmapped over seeds) records mean |act|
  per layer.

  `fast_compile` compiles with XLA's backend optimisation level 0: these
  programs are tiny and run once, so compile time dominates.
  """
  acts: dict[str, np.ndarray] = {}
  losses = np.zeros((steps, len(widths)))
  keys = jnp.stack([jax.random.key(int(s)) for s in seeds])
  opts = {'xla_backend_optimization_level': 0} if fast_compile else None
  for wi, width in enumerate(widths):
    setup = make_setup(int(width))

    def one_seed(key, setup=setup):
      kp, kb = jax.random.split(key)
      params, batch = setup.init(kp), setup.batch(kb)

      def body(carry, _):
        p, st = carry
        (loss, a), g = jax.value_and_grad(setup.loss_and_acts, has_aux=True)(p, batch)
        stats = {k: jnp.mean(jnp.abs(v.astype(jnp.float32))) for k, v in a.items()}
        upd, st = setup.tx.update(g, st, p)
        return (optax.apply_updates(p, upd), st), (stats, loss)
      _, out = jax.lax.scan(body, (params, setup.tx.init(params)), None, length=steps)
      return out

    stats, loss = jax.device_get(jax.jit(jax.vmap(one_seed), compiler_options=opts)(keys))
    losses[:, wi] = np.mean(loss, axis=0)
    for k, v in stats.items():                  # v: [seeds, steps]
      acts.setdefault(k, np.zeros((steps, len(widths))))[:, wi] = np.mean(v, axis=0)
  return CoordResult(tuple(int(w) for w in widths), acts, losses)


# --- reading activations from a linen model --------------------------------------

def _capture(mdl: nn.Module, method: str) -> bool:
  return method == '__call__' and not isinstance(mdl, nn.Dropout)


def _flatten_intermediates(tree: Mapping[str, Any], prefix: str = '') -> dict[str, jax.Array]:
  out = {}
  for k, v in tree.items():
    if k == '__call__':
      y = v[0]                                  # first call of this module
      if isinstance(y, tuple):                  # Block returns (x, None)
        y = y[0]
      out[prefix or 'output'] = y
    else:
      out.update(_flatten_intermediates(v, f'{prefix}/{k}' if prefix else k))
  return out


def apply_with_acts(module: nn.Module, params: Any,
                    *args) -> tuple[jax.Array, dict[str, jax.Array]]:
  """module output and {module path: its __call__ output} (top-level output as 'output')."""
  y, state = module.apply({'params': params}, *args, capture_intermediates=_capture,
                          mutable=['intermediates'])
  return y, _flatten_intermediates(state['intermediates'])


# --- ready-made setups -------------------------------------------------------------

def _xent(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _optimizer(optimizer: str, lr: float, mults, **kw):
  if optimizer not in ('adam', 'sgd'):
    raise ValueError(f'optimizer={optimizer!r}; expected adam or sgd')
  return optim.make_optimizer(optimizer, lr, mults, **kw)


def _check_param(param: str):
  if param not in ('sp', 'mup'):
    raise ValueError(f'param={param!r}; expected sp or mup')


def mlp_setup(param: str, optimizer: str, lr: float, *, base_width: int = 64, depth: int = 2,
              in_dim: int = 48, out_dim: int = 10, batch: int = 64, readout: str = 'zero',
              activation: str = 'relu') -> Callable[[int], CoordSetup]:
  """MLP in_dim -> width x depth -> out_dim on a Gaussian batch with random labels.

  SP: fan-in init (std 1/sqrt(fan_in)), plain optimizer.  muP: base width
  `base_width`, readout zero (or base) init, forward multiplier 1/m, muP optimizer.
  """
  _check_param(param)

  def make(width: int) -> CoordSetup:
    mults, out_mult = None, 1.0
    if param == 'mup':
      mults = mlp_multipliers(width, base_width, depth, in_dim, out_dim)
      out_mult = 1.0 / mults.readout_width_mult
    module = MLP((width,) * depth, out_dim, out_mult, activation)

    def init(key):
      params = nn.meta.unbox(module.init(key, jnp.zeros((1, in_dim)))['params'])
      if mults is None:
        return params
      return mup_init.rescale_init(params, mults, init_scheme='fan_in', readout=readout)

    def make_batch(key):
      kx, ky = jax.random.split(key)
      return (jax.random.normal(kx, (batch, in_dim)),
              jax.random.randint(ky, (batch,), 0, out_dim))

    def loss_and_acts(p, b):
      logits, acts = apply_with_acts(module, p, b[0])
      acts.pop('output')                        # the same array as 'readout'
      return _xent(logits, b[1]), acts
    return CoordSetup(init, _optimizer(optimizer, lr, mults), loss_and_acts, make_batch)
  return make


def mlp_multipliers(width: int, base_width: int, depth: int = 2, in_dim: int = 48,
                    out_dim: int = 10) -> shapes.Multipliers:
  """Multipliers of `MLP((width,) * depth, out_dim)` against the same MLP at base_width."""
  def abstract(w):
    module = MLP((w,) * depth, out_dim)
    boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, in_dim)))['params']
    return spec_lib.specs_from_boxed(boxed), spec_lib.unbox(boxed)
  s, p = abstract(width)
  bs, bp = abstract(base_width)
  ds, dp = abstract(2 * base_width)      # delta: says which axes are width at base width
  return shapes.width_multipliers(s, p, base_specs=bs, base_shapes=bp, delta_specs=ds,
                                  delta_shapes=dp)



def transformer_setup(param: str, optimizer: str, lr: float, *, base_width: int = 64,
                      preset: str = 'gpt2-tiny', seq_len: int = 32, batch: int = 8,
                      num_heads: int = 4, readout: str = 'zero', zero_query: bool = False,
                      **overrides) -> Callable[[int], CoordSetup]:
  """Our Transformer with embed_dim = width, mlp_dim = 4 width, `num_heads` heads
  (so head_dim grows with width), random tokens as the fixed batch.

  SP: the preset's own init (N(0, init_std)), 1/sqrt(d) attention, plain optimizer.
  muP: `mup_config` against the base width, `init_params` (hidden std x m^-1/2,
  `readout` init for an untied head), muP optimizer.
  """
  _check_param(param)

  def cfg_at(w):
    return models.get_config(preset, embed_dim=w, mlp_dim=4 * w, num_heads=num_heads,
                             max_len=seq_len, **overrides)

  def make(width: int) -> CoordSetup:
    return _transformer(param, optimizer, lr, cfg_at(width), cfg_at(base_width), seq_len=seq_len,
                        batch=batch, readout=readout, zero_query=zero_query)
  return make


def transformer_depth_setup(param: str, optimizer: str, lr: float, *, base_depth: int = 2,
                            width: int = 64, depth_alpha: float = 1.0, preset: str = 'gpt2-tiny',
                            seq_len: int = 16, batch: int = 2, num_heads: int = 4,
                            readout: str = 'zero', **overrides) -> Callable[[int], CoordSetup]:
  """The depth version: `make(depth)` for our Transformer at a fixed width.

  muP: depth transfer against `base_depth` (`mup_config(..., depth_alpha=...)`: residual
  branches x (L / L_base)^-alpha, 1.0 CompleteP, 0.5 depth-muP; the muP optimizer's
  depth rule), at the base width.  SP: the preset as is (GPT-2's 1/sqrt(2L) init of the
  residual outputs, no forward multiplier, plain optimizer).  Besides every layer, the
  activations hold 'residual': the last block's output (the residual stream the final
  norm reads), the quantity CompleteP keeps depth-independent.
  """
  _check_param(param)

  def cfg_at(depth):
    return models.get_config(preset, embed_dim=width, mlp_dim=4 * width, num_heads=num_heads,
                             num_layers=depth, max_len=seq_len, **overrides)

  def make(depth: int) -> CoordSetup:
    return _transformer(param, optimizer, lr, cfg_at(depth), cfg_at(base_depth), seq_len=seq_len,
                        batch=batch, readout=readout, zero_query=False, depth_alpha=depth_alpha,
                        residual_key=f'block_{depth - 1}')
  return make


def _transformer(param: str, optimizer: str, lr: float, cfg, base, *, seq_len: int, batch: int,
                 readout: str, zero_query: bool, depth_alpha: float | None = None,
                 residual_key: str | None = None) -> CoordSetup:
  mults = None
  if param == 'mup':
    cfg = mup_init.mup_config(cfg, base, depth_alpha=depth_alpha)
    mults = shapes.config_multipliers(cfg, base, depth_alpha=depth_alpha)
  module = models.build(cfg)

  def init(key):
    params = spec_lib.unbox(models.init_boxed(cfg, key))
    if mults is None:
      return params
    return mup_init.rescale_init(params, mults, init_scheme=cfg.init, readout=readout,
                                 zero_query=zero_query)

  def make_batch(key):
    return jax.random.randint(key, (batch, seq_len + 1), 0, cfg.vocab_size)

  def loss_and_acts(p, toks):
    logits, acts = apply_with_acts(module, p, toks[:, :-1])
    # An untied head's raw output precedes logits_mult; 'output' is the real logits.
    acts.pop('lm_head', None)
    if residual_key is not None:
      acts['residual'] = acts[residual_key]
    return _xent(logits, toks[:, 1:]), acts
  return CoordSetup(init, _optimizer(optimizer, lr, mults), loss_and_acts, make_batch)


# --- a whole study from a config (experiments/coord_check.py) -------------------------

def run_study(config) -> dict[str, dict[str, CoordResult]]:
  """{model: {'SP Adam': result, 'muP Adam': ..., ...}} for `configs/coord_check.py`."""
  out: dict[str, dict[str, CoordResult]] = {}
  seeds = tuple(range(config.seeds))
  for model in [m for m in config.models.split(',') if m]:
    if model not in ('mlp', 'transformer'):
      raise ValueError(f'unknown model {model!r} in config.models; expected mlp and/or transformer')
    mc = config[model]
    rows = {}
    for opt in [o for o in config.optimizers.split(',') if o]:
      lr = mc.lr_adam if opt == 'adam' else mc.lr_sgd
      for param in ('sp', 'mup'):
        label = f'{"SP" if param == "sp" else "muP"} {"Adam" if opt == "adam" else "SGD"}'
        if model == 'mlp':
          make = mlp_setup(param, opt, lr, base_width=mc.base_width, depth=mc.depth,
                           batch=mc.batch, readout=config.readout)
        else:
          make = transformer_setup(param, opt, lr, base_width=mc.base_width, preset=mc.preset,
                                   seq_len=mc.seq_len, batch=mc.batch, num_heads=mc.num_heads,
                                   readout=config.readout, num_layers=mc.num_layers,
                                   tie_embeddings=mc.tie_embeddings)
        rows[label] = run_setups(make, tuple(mc.widths), steps=config.steps, seeds=seeds)
    out[model] = rows
  return out
