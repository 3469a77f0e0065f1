"""Cloning checkpoints on disk: our trainer's orbax checkpoints and Hugging Face directories.

    from hyperinit.train import clone_job
    res = clone_job.clone_checkpoint('runs/small', 'runs/big_init', cloning.factors_for(2))
    # train it: --config.model.name=init_from --config.init_from=runs/big_init

`experiments/clone.py` is the command-line wrapper.  Layouts written (all in
`hyperinit.checkpoint`'s formats):

  orbax     a params directory (`checkpoint.save_model`): `load_params(DST)` and
            the trainer's `config.init_from=DST` read it; the destination model
            config and the clone's settings travel in its metadata.
  orbax + opt state (`with_opt_state=True`, source: our checkpoint)
            `DST/checkpoints/<step>/...`: a trainer workdir whose newest
            checkpoint is the source's step with params AND Adam moments
            widened (`widen_opt_state`) and the source's data position, so
            `experiments.train --workdir=DST --config.model.name=init_from`
            resumes the run at the wider size.
  hf        a Hugging Face directory (`interop.save_hf`), refused with the
            reason when the clone is not a standard member of its family.

Every output is written into a temporary directory beside DST and renamed into
place when complete.  Before any work, DST is refused when it is, contains or lies
inside the source (its run, the checkpoint root and step read; by real path), is a
mount point or read-only, or is not empty without `overwrite`
(`destinations.check_destination`); and the clone is sized from shapes and refused
when it cannot fit in memory (`memory.clone_bytes`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging

from hyperinit import _io, interop, models, sharding
from hyperinit import checkpoint as ckpt_lib
from hyperinit import spec as spec_lib
from hyperinit.cloning import config as config_lib
from hyperinit.cloning import factors as factors_lib
from hyperinit.cloning import optim as optim_lib
from hyperinit.cloning import plan as plan_lib
from hyperinit.cloning import widen
from hyperinit.train import destinations, memory, optim, step as step_lib

FORMATS = ('orbax', 'hf')
_HF_DTYPE_KEYS = ('dtype', 'torch_dtype')


# --- sources ---------------------------------------------------------------------------------

def source_format(path: str) -> str:
  """'hf' for a directory with config.json, 'orbax' for one of our checkpoints."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'--src {path!r} does not exist')
  if ckpt_lib.is_hf_dir(path):
    return 'hf'
  if not os.path.isdir(path):
    raise ValueError(f'--src {path!r} is a file; expected a trainer workdir, a checkpoint '
                     'directory, or a Hugging Face directory (with config.json)')
  return 'orbax'


@dataclasses.dataclass
class Source:
  """A loaded source model.

  Attributes:
    cfg: its model config.
    params: nested dict of arrays (`models.param_shapes(cfg)`).
    fmt: 'hf' or 'orbax'.
    path: where it came from.
    step: the checkpoint step (orbax) or None.
    dtype: stored dtype of an HF checkpoint (the default output dtype), else None.
  """
  cfg: models.ModelConfig
  params: Any
  fmt: str
  path: str
  step: int | None = None
  dtype: str | None = None


def source_config(path: str, step: int | None = None) -> models.ModelConfig:
  """The model config of a source, read without loading its params (for `cli_factors`)."""
  source_format(path)
  return ckpt_lib.read_model_config(path, step)


def load_source(path: str, step: int | None = None) -> Source:
  """Loads an HF directory (fp32) or one of our checkpoints (`checkpoint.load_params`)."""
  fmt = source_format(path)
  if fmt == 'hf':
    if step is not None:
      raise ValueError(f'--step={step} applies to orbax checkpoints; {path!r} is a Hugging Face '
                       'directory')
    d = interop.read_config(path)
    stored = next((d[k] for k in _HF_DTYPE_KEYS if isinstance(d.get(k), str)), 'float32')
    params, cfg = ckpt_lib.load_params(path)
    return Source(cfg, params, 'hf', path, None,
                  stored if stored in ('float32', 'bfloat16', 'float16') else 'float32')
  if step is None:
    step = int(ckpt_lib.read_meta(path)['step'])
  params, cfg = ckpt_lib.load_params(path, step=step)
  return Source(cfg, params, 'orbax', path, step)


def restore_train_state(src: Source):
  """(state, run config, step dir) of our checkpoint, with the optimizer state (one device)."""
  root, _ = ckpt_lib.resolve(src.path)
  ck = ckpt_lib.Checkpointer(root, read_only=True)
  meta = ck.meta(src.step)
  if not meta.get('config'):
    raise ValueError(f'--with_opt_state: checkpoint {root / str(src.step)} records no run '
                     'config, so its optimizer cannot be rebuilt')
  config = ml_collections.ConfigDict(meta['config'])
  tx, _ = optim.from_config(config.optimizer, int(config.num_train_steps),
                            models.param_specs(src.cfg))
  mesh = sharding.make_mesh({}, jax.local_devices()[:1])
  shapes = models.param_shapes(src.cfg)
  param_sh = jax.tree.map(lambda _: sharding.replicated(mesh), shapes)
  target = step_lib.abstract_state(tx, shapes,
                                   step_lib.state_shardings(param_sh, tx, mesh, shapes))
  try:
    state, _ = ck.restore(target, src.step)
  except ckpt_lib.CheckpointError as e:
    raise ckpt_lib.CheckpointError(
        f'--with_opt_state: {e} (the optimizer state must match config.optimizer of the run; '
        'a run with a custom optimizer= cannot be widened from the CLI)') from e
  return state, config, root / str(src.step)


def write_resumable(dst: str, cfg: models.ModelConfig, state: Any, run_config: Any,
                    src_step_dir: Any, *, info: Mapping[str, Any], overwrite: bool = False) -> str:
  """Writes `DST/checkpoints/<step>/`: widened TrainState + the source's data position."""
  meta = ckpt_lib.run_meta(cfg, models.param_specs(cfg), run_config)
  meta['clone'] = dict(info)
  step = int(state.step)
  with _io.atomic_dir(dst, overwrite, overwrite_hint='--overwrite') as tmp:
    ck = ckpt_lib.Checkpointer(os.path.join(tmp, 'checkpoints'), save_every=1, keep=1,
                               async_save=False)
    try:
      ck.save(step, state, None, meta, force=True)
      ck.wait()
    finally:
      ck.close()
    data = os.path.join(os.fspath(src_step_dir), 'data')
    if os.path.isdir(data):  # the grain iterator state does not depend on the model width
      shutil.copytree(data, os.path.join(tmp, 'checkpoints', str(step), 'data'))
  return dst


# --- factors from command-line values ----------------------------------------------------------

def parse_axis_values(text: str | None, flag: str) -> dict[str, float]:
  """'embed=2,mlp=4' -> {'embed': 2.0, 'mlp': 4.0}; ValueError naming the flag and item."""
  out = {}
  for item in filter(None, (s.strip() for s in (text or '').split(','))):
    name, sep, value = item.partition('=')
    if not sep or not name.strip():
      raise ValueError(f'--{flag}: bad item {item!r}; expected axis=number, e.g. embed=2')
    try:
      out[name.strip()] = float(value)
    except ValueError:
      raise ValueError(f'--{flag}: {item!r}: {value!r} is not a number') from None
  return out


def cli_factors(src_cfg: models.ModelConfig, *, factor: float | None = None,
                attention: str = 'heads', embed: float | None = None, mlp: float | None = None,
                heads: float | None = None, head_dim: float | None = None,
                kv_heads: float | None = None, axes: str = '', sizes: str = '') -> dict[str, Any]:
  """The factor dict from the CLI's flags (validated later by `plan_model`).

  `factor` widens embed, mlp and `attention` ('heads' or 'head_dim'); the
  per-axis values override it; `axes` ('name=n,...') sets any logical axis;
  `sizes` ('name=size,...') gives destination sizes, turned into factors by
  `factors_between` (an error names an axis whose size is not a multiple).
  """
  out: dict[str, Any] = {}
  if factor is not None:
    out.update(factors_lib.factors_for(factor, attention))
  for name, v in (('embed', embed), ('mlp', mlp), ('heads', heads), ('head_dim', head_dim),
                  ('kv_heads', kv_heads)):
    if v is not None:
      out[name] = v
  out.update(parse_axis_values(axes, 'axes'))
  want = parse_axis_values(sizes, 'sizes')
  if want:
    src = config_lib.source_sizes(src_cfg)
    for ax, size in want.items():
      if not float(size).is_integer():
        raise ValueError(f'--sizes: size {size!r} of axis {ax!r} is not an integer')
    out.update(factors_lib.factors_between(src, {a: int(s) for a, s in want.items()}))
  if not any(float(v) != 1 for v in out.values()):
    raise ValueError('nothing to widen: pass --factor=N or per-axis factors (--embed, --mlp, '
                     '--heads / --head_dim, --axes=name=n, --sizes=name=size)')
  return out


# --- output checks ------------------------------------------------------------------------------

def hf_refusal(dst_cfg: models.ModelConfig) -> str | None:
  """Why the clone cannot be written as a Hugging Face directory (None: it can)."""
  reasons = list(config_lib.nonstandard_reasons(dst_cfg))
  try:
    interop.require_exportable(dst_cfg)
  except ValueError as e:
    reasons.append(str(e))
  if not reasons:
    return None
  return ('refusing --format=hf: the clone is not a standard Hugging Face model of family '
          f'{getattr(dst_cfg, "family", "vit")!r}: ' + '; '.join(reasons) +
          '. Write it with --format=orbax instead: our models (models.apply_fn) run it exactly '
          'and the trainer takes it as config.init_from. (Growing heads instead of head_dim '
          'keeps a standard model.)')


# --- the whole thing -----------------------------------------------------------------------

@dataclasses.dataclass
class CloneResult:
  """What `clone_checkpoint` did."""
  src: Source
  dst: str
  fmt: str
  dst_cfg: models.ModelConfig
  plan: plan_lib.ClonePlan
  params: Any
  rel_error: float | None
  summary: str


def logits_relative_error(src_cfg: models.ModelConfig, src_params: Any,
                          dst_cfg: models.ModelConfig, dst_params: Any,
                          inputs: Any = None) -> float:
  """max |dst logits - src logits| / max |src logits| on `inputs` (fp32 compute).

  Default inputs: tokens [2, 16] (LM) or images [2, H, W, C] (ViT) from a fixed key.
  """
  src_cfg, dst_cfg = src_cfg.replace(dtype='float32'), dst_cfg.replace(dtype='float32')
  if inputs is None:
    key = jax.random.key(1234)
    if isinstance(src_cfg, models.ViTConfig):
      inputs = jax.random.normal(key, (2, src_cfg.image_size, src_cfg.image_size,
                                       src_cfg.num_channels))
    else:
      inputs = jax.random.randint(key, (2, min(16, src_cfg.max_len)), 0, src_cfg.vocab_size)
  a = np.asarray(models.apply_fn(src_cfg)(src_params, inputs), np.float64)
  b = np.asarray(models.apply_fn(dst_cfg)(dst_params, inputs), np.float64)
  if a.shape != b.shape:
    raise ValueError(f'source logits {a.shape} and clone logits {b.shape} differ in shape')
  return float(np.abs(b - a).max() / max(np.abs(a).max(), 1e-30))


def clone_checkpoint(src: str | Source, dst: str, factors: Mapping[str, Any], *,
                     variant: str = 'noisy_symmetric', snr_db: float = 10.0, seed: int = 0,
                     fmt: str | None = None, overwrite: bool = False,
                     with_opt_state: bool = False, kv_rule: str = 'auto', tie: str = 'keep',
                     noise_dist: str = 'irwin_hall', step: int | None = None,
                     dtype: str | None = None, check: bool = True,
                     max_bytes: int | None = None) -> CloneResult:
  """Clones a checkpoint directory into `dst`.

  Args:
    src: a trainer workdir / checkpoint dir / step dir, or a Hugging Face
      directory (or an already loaded `Source`).
    dst: output directory (written atomically).
    factors: {logical axis: integer factor}, e.g. `factors_for(2)`.
    variant, snr_db, seed: the clone variant, its noise level, and the seed of
      the noise (`jax.random.key(seed)`).
    fmt: 'orbax' | 'hf'; default: the source's format.
    overwrite: replace a non-empty `dst`.
    with_opt_state: also widen the optimizer state (our checkpoints only) and
      write a resumable trainer workdir (see module doc).
    kv_rule, tie, noise_dist: see `plan_model`.
    step: which checkpoint step of an orbax source (default: the latest).
    dtype: stored dtype of an HF output (default: the source's).
    check: compare the clone's logits with the source's (fp32, random inputs).
    max_bytes: refuse a clone whose estimated peak memory (`memory.clone_bytes`)
      exceeds this; None: the host's available memory; 0: no check.

  Raises:
    ValueError naming the axis / leaf / option for bad factors, and for an HF
    output of a clone that no standard HF model can express (with the reason).
    errors.UserInputError: `dst` overlaps the source or cannot be written.
    errors.ResourceError: the clone would not fit in memory.
    FileExistsError: `dst` is not empty and `overwrite` is False.
  """
  if fmt is not None and fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r}: expected one of {FORMATS}')
  # Everything that can refuse the job is checked before the source's params are loaded.
  if isinstance(src, Source):
    path, src_fmt, src_cfg = src.path, src.fmt, src.cfg
  else:
    path, src_fmt, src_cfg = src, source_format(src), source_config(src, step)
  destinations.check_destination(path, dst, overwrite)
  fmt = fmt or src_fmt
  if with_opt_state and (src_fmt != 'orbax' or fmt != 'orbax'):
    raise ValueError('--with_opt_state needs a checkpoint written by our trainer as --src and '
                     f'--format=orbax (got a {src_fmt} source, {fmt} output): a Hugging Face '
                     'directory holds no optimizer state')
  dst_cfg = config_lib.clone_config(src_cfg, factors, kv_rule=kv_rule, tie=tie)
  if fmt == 'hf':
    why = hf_refusal(dst_cfg)
    if why:
      raise ValueError(why)
  src_shapes, dst_shapes = models.param_shapes(src_cfg), models.param_shapes(dst_cfg)
  n_src, n_dst = spec_lib.count(src_shapes), spec_lib.count(dst_shapes)
  host, device = memory.clone_bytes(src_shapes, dst_shapes, with_opt_state)
  memory.check_fits(host, f'cloning {n_src:,} -> {n_dst:,} params', max_bytes, device)
  if isinstance(src, Source):
    source = src
  else:
    t = time.perf_counter()
    source = load_source(src, step)
    logging.info('clone: loaded %s (%s, %.1f s)', src, source.fmt, time.perf_counter() - t)
  plan, dst_cfg = config_lib.plan_model(source.cfg, factors, variant, snr_db, kv_rule=kv_rule,
                                        tie=tie, noise_dist=noise_dist)
  t0 = time.perf_counter()
  progress = lambda what: logging.info('clone: %s (%.1f s elapsed)', what, time.perf_counter() - t0)
  state = None
  if with_opt_state:
    state, run_config, src_step_dir = restore_train_state(source)
    source.params = state.params
    progress('restored the source run\'s optimizer state')
  params = jax.block_until_ready(widen.clone_fn(plan)(source.params, jax.random.key(seed)))
  progress(f'cloned {n_src:,} -> {n_dst:,} params ({memory.tree_bytes(params) / memory.GB:.2f} GB)')
  err = logits_relative_error(source.cfg, source.params, dst_cfg, params) if check else None
  if check:
    progress(f'logits checked: {err:.2e} relative')
  info = dict(source=os.path.abspath(source.path), source_format=source.fmt,
              source_step=source.step, factors=plan.factor_dict, variant=variant,
              snr_db=float(snr_db), seed=int(seed), noise_dist=noise_dist, kv_rule=kv_rule,
              tie=tie, with_opt_state=bool(with_opt_state), notes=list(plan.notes),
              logits_max_rel_error=err)
  if fmt == 'hf':
    # An HF source's tokenizer and generation config hold for the clone (same vocabulary).
    carried = interop.companion_files(source.path) if source.fmt == 'hf' else []
    interop.save_hf(dst, dst_cfg, jax.device_get(params), overwrite=overwrite,
                    dtype=dtype or source.dtype or dst_cfg.param_dtype, copy_files=carried)
  elif with_opt_state:
    opt = optim_lib.widen_opt_state(state.opt_state, plan)
    wide = state.replace(params=params, opt_state=opt)
    write_resumable(dst, dst_cfg, wide, run_config, src_step_dir, info=info, overwrite=overwrite)
  else:
    ckpt_lib.save_model(dst, dst_cfg, params, info={'clone': info}, overwrite=overwrite,
                        overwrite_hint='--overwrite')
  progress(f'wrote {fmt} {dst}')
  summary = config_lib.describe(plan, source.cfg, dst_cfg)
  return CloneResult(source, dst, fmt, dst_cfg, plan, params, err, summary)


def usage_hint(res: CloneResult) -> str:
  """How to use the output, one or two lines."""
  if res.fmt == 'hf':
    return (f'transformers.AutoModelForCausalLM.from_pretrained({res.dst!r}) loads it; so does '
            f'--config.init_from={res.dst} --config.model.name=init_from')
  if os.path.isdir(os.path.join(res.dst, 'checkpoints')):
    return (f'resume the widened run: python -m experiments.train --config=<the source run\'s '
            f'config> --config.model.name=init_from --workdir={res.dst}')
  return (f'train it: python -m experiments.train --config=<config> --config.model.name=init_from '
          f'--config.init_from={res.dst} --workdir=<new dir>')


def info_json(res: CloneResult) -> str:
  return json.dumps({'dst': res.dst, 'format': res.fmt, 'dst_config': res.dst_cfg.to_dict(),
                     'logits_max_rel_error': res.rel_error}, indent=1)
