"""What every config shares: the argument parser (`parse_arg`) and the trainer's fields.

A config file's `get_config(arg)` takes big_vision-style arguments after the colon:

    --config=configs/lm.py:small,local,steps=200,lr=3e-3

a preset name, bare flags (set True) and key=value overrides, all named.  Once the
package is installed, the configs are importable from anywhere (`from configs import lm`).
"""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections
from ml_collections import config_dict

P = config_dict.placeholder

_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')


def _convert(what: str, key: str, text: str, kind: type) -> Any:
  if kind is bool:
    if text.lower() not in _TRUE + _FALSE:
      raise ValueError(f'{what} config option {key}={text!r}: expected true or false')
    return text.lower() in _TRUE
  try:
    return kind(text)
  except ValueError:
    raise ValueError(f'{what} config option {key}={text!r}: expected a {kind.__name__}') from None


def parse_arg(arg: str | None, what: str, presets: Iterable[str], default: str,
              **options: Any) -> ml_collections.ConfigDict:
  """Parses 'preset,flag,key=value,...' into a ConfigDict (preset + every option).

  Args:
    arg: the text after the config file's colon (None or '': `default`).
    what: the config's name, for error messages ('lm', 'vit', ...).
    presets: the preset names; at most one appears in `arg`.
    default: the preset used when `arg` names none.
    **options: option name -> default value (a bool is a flag: a bare name sets it True),
      or a type (int, float, str) for an option that is None unless given.

  Returns:
    ConfigDict(preset=..., **options) with the given values converted to each option's type.

  Raises:
    ValueError: an unknown preset or option, two presets, or a value of the wrong type; the
      message lists what is accepted.
  """
  presets = tuple(presets)
  kinds = {k: (v if isinstance(v, type) else type(v)) for k, v in options.items()}
  out = {k: (None if isinstance(v, type) else v) for k, v in options.items()}
  preset = None
  for token in (t.strip() for t in (arg or '').split(',')):
    if not token:
      continue
    key, eq, value = token.partition('=')
    key = key.strip()
    if eq:
      if key not in options:
        raise ValueError(f'unknown {what} config option {key!r} in {arg!r}; options: '
                         f'{sorted(options)}')
      out[key] = _convert(what, key, value.strip(), kinds[key])
    elif token in presets:
      if preset is not None:
        raise ValueError(f'{what} config {arg!r} names two presets ({preset!r}, {token!r})')
      preset = token
    elif kinds.get(token) is bool:
      out[token] = True
    else:
      raise ValueError(f'unknown {what} config {token!r} in {arg!r}; expected one preset of '
                       f'{sorted(presets)}, flags {sorted(k for k in kinds if kinds[k] is bool)}'
                       f' and key=value options {sorted(options)}')
  return ml_collections.ConfigDict({'preset': preset or default, **out})


def apply_run_options(cfg: ml_collections.ConfigDict, args: ml_collections.ConfigDict,
                      warmup: int) -> None:
  """The trainer options every training config takes: steps=, batch=, lr=, seed=.

  steps= also sets the warm-up to min(`warmup` (the preset's), steps // 10).
  """
  if args.steps is not None:
    cfg.num_train_steps = args.steps
    cfg.optimizer.warmup_steps = min(warmup, args.steps // 10)
  if args.batch is not None:
    cfg.batch_size = args.batch
  if args.lr is not None:
    cfg.optimizer.learning_rate = args.lr
  if args.seed is not None:
    cfg.seed = args.seed


# Options of apply_run_options, for parse_arg.
RUN_OPTIONS = dict(local=False, steps=int, batch=int, lr=float, seed=int)


def model(name: str, **fields) -> ml_collections.ConfigDict:
  """config.model: a preset name plus overrides (None = the preset's / the data's value)."""
  m = ml_collections.ConfigDict()
  m.name = name                 # preset (models.preset_names()) or 'init_from' (use init_from's)
  m.dtype = 'float32'           # compute dtype: float32 | bfloat16 (params stay param_dtype)
  m.param_dtype = 'float32'     # storage dtype of params and optimizer moments
  m.scan_layers = False         # nn.scan over blocks (faster compiles for deep models)
  m.remat = 'none'              # rematerialise blocks: none | full | dots
  m.dropout_rate = P(float)     # None: preset value (0)
  m.attention_impl = P(str)     # jax.nn.dot_product_attention impl: None | 'xla' | 'cudnn'
  m.num_layers = P(int)         # architecture overrides (None: the preset's)
  m.embed_dim = P(int)
  m.num_heads = P(int)
  m.num_kv_heads = P(int)
  m.mlp_dim = P(int)
  m.init_std = P(float)
  for k, v in fields.items():
    m[k] = v
  return m


def training(cfg: ml_collections.ConfigDict, *, steps: int, batch: int, lr: float,
             warmup: int, weight_decay: float, clip: float = 1.0, b2: float = 0.95) -> None:
  """Adds optimizer, mesh, checkpoint and logging fields to `cfg`."""
  cfg.seed = 0                    # params, dropout and data order
  cfg.init_from = ''              # orbax checkpoint dir (ours) or Hugging Face dir; '' = random
  cfg.batch_size = batch          # GLOBAL batch (split over processes and the batch mesh axes)
  cfg.eval_batch_size = P(int)    # None: batch_size
  cfg.grad_accum_steps = 1        # microbatches per update (lax.scan; same update, less memory)
  cfg.num_train_steps = steps     # optimizer updates
  cfg.log_every = 50              # progress line + train metrics every N steps
  cfg.eval_every = 500            # eval every N steps (<= 0: never; always at the end if > 0)
  cfg.eval_batches = 20           # batches per eval (<= 0: one full pass)
  cfg.eval_at_start = False       # also evaluate the initial params (step 0)
  cfg.profile_steps = P(tuple)    # (a, b): a jax.profiler trace of steps [a, b) in workdir/tb

  o = cfg.optimizer = ml_collections.ConfigDict()
  o.name = 'adamw'                # adamw | adam | sgd
  o.learning_rate = lr            # peak learning rate
  o.schedule = 'cosine'           # cosine | linear | constant (after linear warm-up)
  o.warmup_steps = warmup         # linear warm-up from 0
  o.decay_steps = P(int)          # end of the decay (None: num_train_steps)
  o.min_lr_ratio = 0.1            # final lr = ratio * peak
  o.b1 = 0.9                      # Adam betas / eps
  o.b2 = b2
  o.eps = 1e-8
  o.momentum = 0.9                # SGD momentum (0: plain SGD)
  o.nesterov = False
  o.weight_decay = weight_decay   # AdamW: decoupled; adam / sgd: L2. Matrices only (annotations)
  o.grad_clip_norm = clip         # global-norm clipping (0: off)

  m = cfg.mesh = ml_collections.ConfigDict()
  m.data = -1                     # mesh axis sizes; -1 = the remaining devices
  m.fsdp = 1                      #   FSDP: fsdp=-1, data=1;  TP: tensor=k
  m.tensor = 1
  m.rules = ''                    # rule overrides, e.g. 'embed:,mlp:tensor,batch:data+fsdp'

  cfg.mup = mup()

  c = cfg.checkpoint = ml_collections.ConfigDict()
  c.every = 1000                  # save every N steps (and at the end and on SIGTERM)
  c.keep = 3                      # newest N checkpoints kept
  c.async_save = True             # write in the background
  c.restore_step = P(int)         # resume from this step (None: the latest)
  c.reset_data = False            # allow resuming with a fresh data iterator (process count changed)
  c.preemption_sync_every = 10    # multi-process: agree on SIGTERM every N steps
  c.allow_config_change = False   # resume although hyper-parameters differ from the checkpoint's
  c.restart_if_all_corrupt = False  # every step broken: set them aside and start over (else stop)


def mup() -> ml_collections.ConfigDict:
  """config.mup: train under muP against a base model (hyperinit.train.mup, docs/mup.md)."""
  u = ml_collections.ConfigDict()
  u.enabled = False               # muP forward multipliers, init, per-leaf LR and eps
  b = u.base = ml_collections.ConfigDict()  # the base (proxy) the hyper-parameters are tuned on
  b.name = P(str)                 # None: the run's model; a preset; a checkpoint / HF dir
  b.num_layers = P(int)           # base overrides on top of `name` (None: keep)
  b.embed_dim = P(int)
  b.num_heads = P(int)
  b.num_kv_heads = P(int)
  b.head_dim = P(int)
  b.mlp_dim = P(int)
  # Base hyper-parameters (mup.BaseHParams): tuned on the base, the same at every width.
  u.output_mult = P(float)        # logits x output_mult/m (None: the base's logits_mult)
  u.attn_mult = P(float)          # attention x attn_mult/d_head (None: sqrt(base d_head), = SP)
  u.embed_mult = P(float)         # input embedding multiplier; None: the base's
  u.hidden_init_mult = 1.0        # hidden kernels' init std x this (on top of muP's 1/sqrt(m))
  u.readout_init_mult = 1.0       # readout init std x this (readout_init base | keep)
  u.input_lr_mult = 1.0           # LR x this for input-like leaves (embeddings)
  u.hidden_lr_mult = 1.0          # LR x this for hidden (and bottleneck) kernels
  u.output_lr_mult = 1.0          # LR x this for the readout kernel
  u.vector_lr_mult = 1.0          # LR x this for biases, norm gains (and the readout bias)
  u.readout_init = 'zero'         # untied readout init: zero | base (base width's std) | keep
  u.zero_query = False            # zero-initialise query projections (uniform attention at init)
  u.wd_mode = 'fixed'             # decay lr*wd per step for every leaf | follows_lr (lr*s*wd)
  u.eps_mode = 'all'              # Adam eps / m on every width-dependent leaf | hidden | none
  u.depth_alpha = P(float)        # depth transfer: branches x (L/L_base)^-alpha; None: off
  return u
