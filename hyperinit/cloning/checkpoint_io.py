"""Checkpoint files for the clone CLI: reading sources, writing orbax outputs atomically.

Sources: a Hugging Face directory (config.json + safetensors, `interop.load_hf`) or a
checkpoint written by our trainer (a workdir, its checkpoints/ root or a step directory).
Outputs (see `cli` for the layouts): `write_orbax` (params only, step 0) and
`write_resumable` (a trainer workdir with widened optimizer state).  Every output tree is
built in a temporary directory beside the destination and renamed into place when complete
(`atomic_tree`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp

from hyperinit import checkpoint as ckpt_lib
from hyperinit import models
from hyperinit.interop import files

_HF_DTYPE_KEYS = ('dtype', 'torch_dtype')

# --- sources -------------------------------------------------------------------------------

def source_format(path: str) -> str:
  """'hf' for a directory with config.json, 'orbax' for one of our checkpoints."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'--src {path!r} does not exist')
  if os.path.isfile(os.path.join(path, 'config.json')):
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


def load_source(path: str, step: int | None = None) -> Source:
  """Loads an HF directory (`interop.load_hf`, fp32) or one of our checkpoints."""
  fmt = source_format(path)
  if fmt == 'hf':
    from hyperinit import interop  # pylint: disable=g-import-not-at-top
    if step is not None:
      raise ValueError(f'--step={step} applies to orbax checkpoints; {path!r} is a Hugging Face '
                       'directory')
    d = interop.read_config(path)
    stored = next((d[k] for k in _HF_DTYPE_KEYS if isinstance(d.get(k), str)), 'float32')
    cfg, params = interop.load_hf(path)
    return Source(cfg, params, 'hf', path, None,
                  stored if stored in ('float32', 'bfloat16', 'float16') else 'float32')
  root, path_step = ckpt_lib.resolve(path)
  if step is None:
    step = path_step if path_step is not None else _latest(root)
  cfg, params = ckpt_lib.load_params(path, step=step)
  return Source(cfg, params, 'orbax', path, step)


def _latest(root) -> int:
  steps = ckpt_lib.Checkpointer(root, read_only=True).all_steps()
  if not steps:
    raise ckpt_lib.CheckpointError(f'no checkpoint in {root}')
  return steps[-1]


# --- atomic directory trees -------------------------------------------------------------------

def atomic_tree(path: str, overwrite: bool = False) -> Iterator[str]:
  """`interop.atomic_dir` for the CLI's --dst: the error names the --overwrite flag."""
  return files.atomic_dir(path, overwrite, overwrite_hint='--overwrite')


# --- writing ----------------------------------------------------------------------------------

def write_orbax(dst: str, cfg: models.ModelConfig, params: Any, *, info: Mapping[str, Any],
                overwrite: bool = False, seed: int = 0) -> str:
  """Writes params as `DST/0/...` (a checkpoint root that init_from and load_params read)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  meta = ckpt_lib.run_meta(cfg, models.param_specs(cfg))
  meta.update(step=0, clone=dict(info))
  note = {'absent': 'a clone has no optimizer state; config.init_from starts a fresh one '
                    '(clone with --with_opt_state from a trainer checkpoint to widen it)'}
  train = {'step': jnp.zeros((), jnp.int32),
           'rng': jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)}
  with atomic_tree(dst, overwrite) as tmp:
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                        enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp, options=opts) as mngr:
      mngr.save(0, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params), opt_state=ocp.args.JsonSave(note),
          train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta)), force=True)
      mngr.wait_until_finished()
  return dst


def restore_train_state(src: Source):
  """(state, run config) of our checkpoint, with the optimizer state (single device)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from hyperinit.train import optim, step as step_lib  # pylint: disable=g-import-not-at-top
  root, _ = ckpt_lib.resolve(src.path)
  ck = ckpt_lib.Checkpointer(root, read_only=True)
  meta = ck.meta(src.step)
  if not meta.get('config'):
    raise ValueError(f'--with_opt_state: checkpoint {root / str(src.step)} records no run '
                     'config, so its optimizer cannot be rebuilt')
  config = ml_collections.ConfigDict(meta['config'])
  tx, _ = optim.from_config(config.optimizer, int(config.num_train_steps),
                            models.param_specs(src.cfg))
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = models.param_shapes(src.cfg)
  sds = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dev)
  target = step_lib.TrainState(step=sds(jax.ShapeDtypeStruct((), jnp.int32)),
                               params=jax.tree.map(sds, shapes),
                               opt_state=jax.tree.map(sds, jax.eval_shape(tx.init, shapes)),
                               rng=sds(jax.ShapeDtypeStruct((2,), jnp.uint32)))
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
  with atomic_tree(dst, overwrite) as tmp:
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
