"""muP in the trainer: `config.mup` -> model config, init, optimizer and checkpoint metadata.

`hyperinit.train.train_and_evaluate` calls `prepare` when `config.mup.enabled`
(fields in `configs/common.py`).  A `MupRun` holds

* `model_cfg`: the run's model with muP's forward multipliers (`mup_config`);
* `mults`: per-leaf `Multipliers` against the base model;
* `hps`: the base hyper-parameters (`mup.BaseHParams`: init, forward and
  per-class LR multipliers), the same at every width;
* `optimizer(config.optimizer, steps, specs)`: the trainer's chain
  (`hyperinit.train.optim.from_config`, i.e. `mup.make_optimizer`) with muP's
  per-leaf learning rates and Adam epsilons, the base HPs' class LR
  multipliers and the wd / eps modes of `options`; at base width with default
  base HPs it is bit-identical to the SP optimizer;
* `params_transform(params, specs)`: muP init for a fresh run, or, for params
  loaded with `init_from`, `fold_multipliers`: the change of forward
  multipliers is folded into the weights so that the loaded model computes
  the same function as before (no muP init: the params are already trained);
* `meta()`: JSON saved in every checkpoint (multipliers, base and target
  configs, the `config.mup` used).  A resumed run checks it against the
  config and refuses to continue under different multipliers.

    run = prepare(config, target_cfg)                 # fresh
    run = prepare(config, target_cfg, saved_meta=m)   # resume: verifies m['mup']
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping

from hyperinit import checkpoint as ckpt_lib
from hyperinit import models
from hyperinit import spec as spec_lib
from hyperinit.checkpoint import CheckpointError
from hyperinit.mup import init as mup_init
from hyperinit.mup.hparams import BaseHParams
from hyperinit.mup import optim as mup_optim
from hyperinit.mup import transforms as mup_transforms
from hyperinit.mup.shapes import Multipliers, config_multipliers
from hyperinit.train import optim

# Config fields that set a model's widths (and depth): a base model differs from the run's in these.
WIDTH_FIELDS = ('num_layers', 'embed_dim', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim')
# Forward multipliers that muP sets (and that a checkpoint's params were computed under).
MULT_FIELDS = ('logits_mult', 'attn_scale', 'attn_mult', 'embed_mult', 'residual_mult')
# The base hyper-parameters (`mup.BaseHParams`), carried unchanged to every width.
HPARAM_FIELDS = tuple(f.name for f in dataclasses.fields(BaseHParams))
# config.mup fields other than the base that change the run.
OPTION_FIELDS = HPARAM_FIELDS + ('readout_init', 'zero_query', 'wd_mode', 'eps_mode',
                                 'depth_alpha')


class MupError(ValueError):
  """A muP setting or a muP checkpoint does not fit the run."""


def enabled(config: Any) -> bool:
  """Whether `config.mup.enabled` is set (configs without a `mup` field: False)."""
  mup = config.get('mup') if hasattr(config, 'get') else None
  return bool(mup is not None and mup.get('enabled'))


def options(config: Any) -> dict[str, Any]:
  """`config.mup` as a plain JSON-able dict (base + options), for metadata and comparison."""
  m = config.mup
  base = {k: m.base.get(k) for k in ('name',) + WIDTH_FIELDS}
  return json.loads(json.dumps({'base': base, **{k: m.get(k) for k in OPTION_FIELDS}}))


# --- the base model -------------------------------------------------------------------

def resolve_base(mup_config: Any, target: models.ModelConfig) -> models.ModelConfig:
  """The base model of `config.mup` for the run's (pre-muP) model `target`.

  The base is `target` with other widths: those of `mup.base.name` (a preset,
  or a checkpoint / Hugging Face directory, e.g. a HyperCloning source, whose
  forward multipliers are taken too), then the `mup.base.<field>` overrides.
  Everything else (vocab, positions, family) stays the target's, so only the
  width axes differ.  No base widths at all means base = target (muP at base
  width, which is standard parametrisation with muP's options).
  """
  b = mup_config.base
  kw: dict[str, Any] = {}
  name = b.get('name')
  if name:
    if name in models.preset_names():
      named = models.get_config(name)
    elif os.path.exists(name):
      named = ckpt_lib.read_model_config(name)
      kw.update({f: getattr(named, f) for f in MULT_FIELDS})
    else:
      raise MupError(f'config.mup.base.name={name!r} is neither a model preset nor an existing '
                     f'checkpoint / Hugging Face directory; presets: {models.preset_names()}')
    if type(named) is not type(target):
      raise MupError(f'config.mup.base.name={name!r} is a {type(named).__name__}, the run trains '
                     f'a {type(target).__name__}')
    kw.update({f: getattr(named, f) for f in WIDTH_FIELDS})
  kw.update({f: b.get(f) for f in WIDTH_FIELDS if b.get(f) is not None})
  try:
    return target.replace(**kw)
  except ValueError as e:
    raise MupError(f'config.mup.base gives an invalid base model ({kw}): {e}') from e


# --- the run --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MupRun:
  """A muP training run: models, multipliers and options (see the module docstring).

  Attributes:
    target_cfg: the run's model before muP (as configured or loaded by init_from).
    base_cfg: the base model whose hyper-parameters transfer.
    model_cfg: target_cfg with muP's forward multipliers (what is trained and saved).
    mults: per-leaf multipliers of model_cfg against base_cfg.
    options: `options(config)`: config.mup as a dict.
    hps: the base hyper-parameters (from `options`).
  """
  target_cfg: models.ModelConfig
  base_cfg: models.ModelConfig
  model_cfg: models.ModelConfig
  mults: Multipliers
  options: Mapping[str, Any]
  hps: BaseHParams = BaseHParams()

  def meta(self) -> dict[str, Any]:
    """JSON metadata for the checkpoint."""
    return {'multipliers': json.loads(self.mults.to_json()),
            'base_config': self.base_cfg.to_dict(), 'target_config': self.target_cfg.to_dict(),
            'config': dict(self.options)}

  def init_transform(self, params: Any, specs: Any = None) -> Any:
    """muP init from the model's standard init at the target width (jittable)."""
    del specs
    return mup_init.rescale_init(params, self.mults, init_scheme=self.model_cfg.init,
                                 readout=self.options['readout_init'],
                                 zero_query=bool(self.options['zero_query']),
                                 **self.hps.init_kwargs())

  def optimizer(self, opt: Any, total_steps: int, specs: Any = None
                ) -> tuple[Any, Any]:
    """(tx, schedule) for `config.optimizer` `opt`: the trainer's chain with muP's per-leaf
    factors, the base HPs' class LR multipliers, and config.mup's wd and eps modes."""
    return optim.from_config(opt, total_steps, specs, self.mults,
                             lr_factors=self.hps.lr_factors(self.mults),
                             wd_mode=self.options['wd_mode'], eps_mode=self.options['eps_mode'])

  def fold_transform(self, source_cfg: models.ModelConfig) -> Callable[[Any, Any], Any]:
    """`params_transform` for init_from params computed under `source_cfg`'s multipliers."""
    factors = fold_factors(self.mults, source_cfg, self.model_cfg)
    return lambda params, specs=None: mup_transforms.scale_leaves(params, factors, 'fold factor')


def build(target: models.ModelConfig, base: models.ModelConfig,
          opts: Mapping[str, Any]) -> MupRun:
  """A `MupRun` from the run's model, its base and the `options` dict."""
  depth_alpha = opts.get('depth_alpha')
  try:
    hps = BaseHParams.from_dict({k: opts[k] for k in HPARAM_FIELDS if opts.get(k) is not None})
  except ValueError as e:
    raise MupError(f'config.mup: {e}') from e
  model_cfg = mup_init.mup_config(target, base, depth_alpha=depth_alpha, **hps.forward_kwargs())
  mults = config_multipliers(model_cfg, base, depth_alpha=depth_alpha)
  mup_init.init_factors(mults, init_scheme=model_cfg.init,
                        readout=opts['readout_init'])   # validates readout_init
  for name, val, allowed in (('wd_mode', opts['wd_mode'], mup_optim.WD_MODES),
                             ('eps_mode', opts['eps_mode'], mup_optim.EPS_MODES)):
    if val not in allowed:
      raise MupError(f'config.mup.{name}={val!r}; expected one of {list(allowed)}')
  return MupRun(target, base, model_cfg, mults, dict(opts), hps)


def prepare(config: Any, target: models.ModelConfig, *,
            saved_meta: Mapping[str, Any] | None = None) -> MupRun:
  """The `MupRun` of a training config, checked against a checkpoint's metadata on resume.

  Args:
    config: the training ConfigDict (with `config.mup`).
    target: the run's model config before muP: from `config.model`, or (model
      name 'init_from') the config recorded by init_from, or on resume the
      checkpoint's `mup.target_config`.
    saved_meta: the checkpoint metadata when resuming.

  Raises:
    MupError: bad `config.mup`; CheckpointError: a checkpoint written with
    other muP settings, with muP but resumed without, or vice versa.
  """
  saved = None if saved_meta is None else saved_meta.get('mup')
  if not enabled(config):
    if saved is not None:
      raise CheckpointError('the checkpoint was trained with muP (its metadata holds the '
                            f'multipliers) but config.mup.enabled is False; set it and '
                            f'config.mup to {saved["config"]} to resume')
    raise MupError('prepare() needs config.mup.enabled=True')
  opts = options(config)
  if saved_meta is None:
    return build(target, resolve_base(config.mup, target), opts)
  if saved is None:
    raise CheckpointError('config.mup.enabled is True but the checkpoint was trained without '
                          'muP; use a new workdir (or init_from the checkpoint)')
  diff = {k: (saved['config'].get(k), v) for k, v in opts.items() if saved['config'].get(k) != v}
  if diff:
    raise CheckpointError(f'config.mup differs from the checkpoint\'s: {diff} (saved, config); '
                          'use a new workdir')
  # The base as saved (its source directory may have moved since); the rest is recomputed.
  run = build(target, models.config_from_dict(saved['base_config']), opts)
  want = Multipliers.from_json(json.dumps(saved['multipliers']))
  if run.mults != want:
    bad = sorted(k for k in set(want.leaves) | set(run.mults.leaves)
                 if want.leaves.get(k) != run.mults.leaves.get(k))
    raise CheckpointError(f'muP multipliers recomputed for this run differ from the '
                          f'checkpoint\'s: leaves {bad[:5]}, axis multipliers '
                          f'{dict(run.mults.axis_mults)} vs {dict(want.axis_mults)}, depth '
                          f'{run.mults.depth_mult} vs {want.depth_mult}; use a new workdir')
  return run


def load_multipliers(path: str, step: int | None = None) -> Multipliers:
  """The muP multipliers saved with a checkpoint (workdir, checkpoint dir or step dir)."""
  meta = ckpt_lib.read_meta(path, step)
  if 'mup' not in meta:
    raise CheckpointError(f'checkpoint {path} was not trained with muP (no "mup" in '
                          'its metadata)')
  return Multipliers.from_json(json.dumps(meta['mup']['multipliers']))


# --- function-preserving change of forward multipliers ----------------------------------

def _attn_scale(cfg) -> float:
  return cfg.attn_mult / (math.sqrt(cfg.d_head) if cfg.attn_scale == 'sqrt' else cfg.d_head)


def fold_factors(mults: Multipliers, old_cfg, new_cfg, specs: Any = None) -> dict[str, float]:
  """path -> factor that makes params of `old_cfg` compute the same function under `new_cfg`.

  The configs must have the same parameters (widths, family) and may differ in
  the forward multipliers: embed_mult (scales the embedding stage: leaves
  outside the blocks other than the final norm and the readout), the attention
  scale (query kernel and bias), residual_mult (the last layer of each residual
  branch, i.e. in-block leaves whose only output axis is 'embed') and
  logits_mult (the readout kernel; with tied embeddings the final norm's gain
  and bias, since the shared table cannot change).  Every one is a linear
  factor on a linear map (RoPE and LayerNorm's output commute with them), so
  the function is preserved up to float rounding.
  """
  diff = {f: (getattr(old_cfg, f), getattr(new_cfg, f)) for f in WIDTH_FIELDS + ('vocab_size',)
          if hasattr(old_cfg, f) and getattr(old_cfg, f) != getattr(new_cfg, f)}
  if type(old_cfg) is not type(new_cfg) or diff:
    raise MupError(f'cannot fold multipliers between different models: {diff or type(old_cfg)}')
  specs = specs if specs is not None else models.param_specs(new_cfg)
  flat_s = spec_lib.flatten(specs, is_leaf=spec_lib.is_spec)
  emb = old_cfg.embed_mult / new_cfg.embed_mult
  attn = _attn_scale(old_cfg) / _attn_scale(new_cfg)
  res = old_cfg.residual_mult / new_cfg.residual_mult
  logits = old_cfg.logits_mult / new_cfg.logits_mult
  tied = bool(getattr(new_cfg, 'tie_embeddings', False))
  if tied:
    logits /= emb      # the shared table is scaled with the embedding stage
    if logits != 1.0 and not any(s.role == 'final_norm' for s in flat_s.values()):
      raise MupError(f'tied embeddings with a parameter-free final norm ({new_cfg.norm}): the '
                     f'logits multiplier change x{logits:g} has no weight to fold into; set '
                     f'config.mup.output_mult so that logits_mult stays {old_cfg.logits_mult:g}')
  out = {}
  for path, s in flat_s.items():
    v = mults[path]
    f = 1.0
    if not v.in_block and s.role not in ('final_norm', 'readout'):
      f *= emb
    if s.role == 'query':
      f *= attn
    if v.in_block and s.writes_residual():
      f *= res
    if s.role == 'readout':
      f *= logits
    if tied and s.role == 'final_norm':
      f *= logits
    out[path] = f
  return out


def fold_multipliers(params: Any, old_cfg, new_cfg, mults: Multipliers) -> Any:
  """Params of `old_cfg` rewritten so that `new_cfg` (same widths, other multipliers) computes
  the same logits; see `fold_factors`."""
  return mup_transforms.scale_leaves(params, fold_factors(mults, old_cfg, new_cfg), 'fold factor')
