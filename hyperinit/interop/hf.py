"""Hugging Face checkpoint directories <-> (hyperinit config, params), without torch.

    params, cfg = interop.load_hf('ckpt/pythia-70m')              # fp32 NumPy params
    logits = models.apply_fn(cfg)(params, tokens)
    interop.save_hf('out/my-model', cfg, params, max_shard_size='2GB')
    # transformers.AutoModelForCausalLM.from_pretrained('out/my-model') loads it.

A directory holds config.json and either model.safetensors or shards listed by
model.safetensors.index.json.  Tensor names, fused layouts and config fields per
family are in `families.py` / `vit.py`, layout conversions in `convert.py`, file
handling in `files.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from absl import logging
from safetensors.numpy import save_file

from hyperinit import spec as spec_lib
from hyperinit.interop import convert
from hyperinit.interop.base import COMMON_FIXED, MHA, STANDARD_HEAD_DIM, Family
from hyperinit.interop.families import FAMILIES, family_for
from hyperinit.interop.files import (CONFIG, INDEX, WEIGHTS, Reader, atomic_dir, parse_size,
                                     read_config)
from hyperinit.models import param_shapes, param_specs
from hyperinit.models.config import DTYPES, ModelConfig, ViTConfig

# --- configs -----------------------------------------------------------------------------

def config_from_hf(d: Mapping[str, Any], param_dtype: str = 'float32') -> ModelConfig:
  """Our config for a parsed HF config.json; ValueError for what we cannot represent."""
  model_type = d.get('model_type')
  if model_type not in FAMILIES:
    raise ValueError(f'unknown model_type {model_type!r} in config.json; supported: '
                     f'{sorted(FAMILIES)}')
  return FAMILIES[model_type].from_hf(d).replace(param_dtype=_dtype_name(param_dtype))


def exportable_problems(cfg: ModelConfig, family: str | None = None) -> list[str]:
  """Every config field the HF family cannot express, as 'field=value (needs ...)' (empty: none).

  Raises ValueError only for an unknown `family` (or a config no family takes).
  """
  fam = family_for(cfg, family)
  bad = []
  for field, allowed in {**COMMON_FIXED, **fam.fixed}.items():
    value = getattr(cfg, field)
    if allowed == STANDARD_HEAD_DIM:
      ok, want = cfg.d_head * cfg.num_heads == cfg.embed_dim, 'embed_dim/num_heads'
      value = cfg.d_head
    elif allowed == MHA:
      ok, want, value = cfg.n_kv_heads == cfg.num_heads, 'num_heads', cfg.n_kv_heads
    else:
      ok, want = value in allowed, ' or '.join(repr(a) for a in allowed)
    if not ok:
      bad.append(f'{field}={value!r} (needs {want})')
  return bad


def is_exportable(cfg: ModelConfig, family: str | None = None) -> bool:
  """Whether `save_hf` can write `cfg` as the Hugging Face family (default: cfg's own)."""
  return not exportable_problems(cfg, family)


def require_exportable(cfg: ModelConfig, family: str | None = None) -> None:
  """Raises ValueError naming every config field the HF family cannot express."""
  _exportable_family(cfg, family)


def _exportable_family(cfg: ModelConfig, family: str | None) -> Family:
  bad = exportable_problems(cfg, family)
  fam = family_for(cfg, family)
  if bad:
    raise ValueError(f'config cannot be exported as Hugging Face {fam.architecture}: '
                     + '; '.join(bad))
  return fam


def check_exportable(cfg: ModelConfig, family: str | None = None) -> None:
  """Deprecated: `require_exportable` (raises) or `is_exportable` (bool)."""
  warnings.warn('interop.check_exportable is deprecated: use interop.require_exportable (raises) '
                'or interop.is_exportable (returns bool)', DeprecationWarning, stacklevel=2)
  require_exportable(cfg, family)


# transformers' default special-token ids per model_type; a small vocabulary (our byte-level
# models) cannot hold them, so they are written as null rather than left to the class default.
_DEFAULT_TOKEN_IDS = {
    'gpt2': {'bos_token_id': 50256, 'eos_token_id': 50256},
    'opt': {'bos_token_id': 2, 'eos_token_id': 2, 'pad_token_id': 1},
    'gpt_neox': {'bos_token_id': 0, 'eos_token_id': 2},
    'llama': {'bos_token_id': 1, 'eos_token_id': 2},
    'olmo': {'eos_token_id': 50279, 'pad_token_id': 1},
}


def hf_config(cfg: ModelConfig, family: str | None = None, dtype: str | None = None,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The config.json dict transformers 5 reads for this config (after `require_exportable`)."""
  fam = _exportable_family(cfg, family)
  d = dict(model_type=fam.model_type, architectures=[fam.architecture],
           dtype=_dtype_name(dtype or cfg.param_dtype), **fam.to_hf(cfg))
  if not isinstance(cfg, ViTConfig):
    d['tie_word_embeddings'] = bool(cfg.tie_embeddings)
    for key, default in _DEFAULT_TOKEN_IDS.get(fam.model_type, {}).items():
      if default >= cfg.vocab_size:
        d[key] = None
  d.update(extra or {})
  return dict(sorted(d.items()))


def _dtype_name(dtype) -> str:
  name = jnp.dtype(dtype).name
  if name not in DTYPES:
    raise ValueError(f'dtype {dtype!r} is not supported; expected one of {list(DTYPES)}')
  return name


# --- reading -----------------------------------------------------------------------------

def _expand(fam: Family, cfg: ModelConfig, flat_specs: Mapping[str, Any]):
  """The family's entries for this config: layers expanded, absent leaves (biases, norms
  of non-parametric LayerNorm, the untied readout...) dropped."""
  out = [convert.Entry(e.hf, e.ours, e.op) for e in fam.top]
  for i in range(cfg.num_layers):
    out += [convert.Entry(tuple(h.format(i=i) for h in e.hf),
                          tuple(f'block_{i}/{o}' for o in e.ours), e.op) for e in fam.layer]
  return [e for e in out if all(o in flat_specs for o in e.ours)]


def _layout(cfg: ModelConfig):
  """(flat specs, flat shapes) of the unscanned layout, the one the tables describe."""
  base = cfg.replace(scan_layers=False, remat='none')
  flat_s = spec_lib.flatten(param_specs(base), is_leaf=spec_lib.is_spec)
  flat_p = {k: tuple(v.shape) for k, v in spec_lib.flatten(param_shapes(base)).items()}
  return flat_s, flat_p


def _expected(entries, flat_s, flat_p) -> dict[str, tuple[int, ...]]:
  out = {}
  for e in entries:
    shapes = convert.hf_shapes(e.op, tuple(flat_s[o] for o in e.ours),
                               tuple(flat_p[o] for o in e.ours))
    out.update(zip(e.hf, shapes))
  return out


def _limit(items: list[str], n: int = 8) -> str:
  return '; '.join(items[:n]) + (f'; ... ({len(items) - n} more)' if len(items) > n else '')


def load_hf(path: str | os.PathLike, param_dtype: str = 'float32', *,
            scan_layers: bool = False) -> tuple[dict[str, Any], ModelConfig]:
  """Imports a Hugging Face checkpoint directory.

  Args:
    path: directory with config.json and model.safetensors (or sharded
      model-XXXXX-of-YYYYY.safetensors + model.safetensors.index.json); tensors
      in float32, float16 or bfloat16.
    param_dtype: dtype of the returned params (and `cfg.param_dtype`).
    scan_layers: return the scanned layout ('blocks', leaves with a leading
      layers axis) and `cfg.scan_layers=True`.

  Returns:
    (params, cfg), the order every hyperinit loader and transform returns: a
    nested dict of host NumPy arrays shaped as `models.param_shapes(cfg)` (e.g. a
    Llama q_proj weight (H*Dh, D) becomes block_i/attn/query/kernel (D, H, Dh))
    and a TransformerConfig or ViTConfig.

  Raises:
    FileNotFoundError: missing directory, config.json or weights file.
    ValueError: unknown model_type, unsupported config field, missing / extra /
      misshapen tensor (named, with its shape and the expected shape).
  """
  path = os.fspath(path)
  d = read_config(path)
  cfg = config_from_hf(d, param_dtype)
  fam = FAMILIES[d['model_type']]
  flat_s, flat_p = _layout(cfg)
  entries = _expand(fam, cfg, flat_s)
  expected = _expected(entries, flat_s, flat_p)
  reader = Reader(path, fam)
  try:
    present = set(reader.source)
    if getattr(cfg, 'tie_embeddings', False) and fam.tied_head:
      present.discard(fam.tied_head)  # transformers ties it to the embedding and ignores it
    missing = [f'{n!r} (expected shape {expected[n]})' for n in expected if n not in present]
    extra = [f'{n!r} with shape {reader.shape(n)}' for n in sorted(present - set(expected))]
    bad = [f'{n!r} has shape {reader.shape(n)} but the config expects {s}'
           for n, s in expected.items() if n in present and reader.shape(n) != s]
    problems = ([f'missing tensors: {_limit(missing)}'] if missing else []) + \
               ([f'unexpected tensors: {_limit(extra)}'] if extra else []) + \
               ([f'wrong shapes: {_limit(bad)}'] if bad else [])
    if problems:
      raise ValueError(f'{path!r} ({fam.architecture}) does not match its config.json: '
                       + ' | '.join(problems))
    dt = jnp.dtype(cfg.param_dtype)
    flat = {}
    for e in entries:
      ys = [reader.get(n).astype(dt, copy=False) for n in e.hf]
      xs = e.op.from_hf(ys, [flat_s[o] for o in e.ours], [flat_p[o] for o in e.ours])
      flat.update({o: np.ascontiguousarray(x) for o, x in zip(e.ours, xs)})
  finally:
    reader.close()
  params = spec_lib.unflatten(flat)
  if scan_layers:
    params, cfg = convert.stack_layers(params, cfg.num_layers), cfg.replace(scan_layers=True)
  return params, cfg


# --- writing -----------------------------------------------------------------------------

def _check_params(cfg: ModelConfig, params: Mapping[str, Any]) -> dict[str, Any]:
  """Flat unscanned params (either layout accepted), checked leaf by leaf against the config."""
  params = convert.unstack_layers(dict(params), cfg.num_layers)
  flat_s, flat_p = _layout(cfg)
  spec_lib.check_tree(params, spec_lib.unflatten(flat_s))
  flat = spec_lib.flatten(params)
  for name, shape in flat_p.items():
    if tuple(np.shape(flat[name])) != shape:
      raise ValueError(f'param {name!r} has shape {tuple(np.shape(flat[name]))} but the config '
                       f'expects {shape}')
  return flat


def save_hf(path: str | os.PathLike, cfg: ModelConfig, params: Mapping[str, Any], *,
            max_shard_size: int | str = '5GB', dtype: str | None = None,
            family: str | None = None, overwrite: bool = False,
            extra_config: Mapping[str, Any] | None = None,
            copy_files: Sequence[str | os.PathLike] = ()) -> list[str]:
  """Exports (cfg, params) as a directory transformers' `from_pretrained` loads.

  Args:
    path: target directory; written atomically (temp dir beside it, then rename).
    cfg, params: a TransformerConfig / ViTConfig and its params (scanned or not,
      NumPy or jax arrays, shapes as `models.param_shapes(cfg)`).
    max_shard_size: bytes per safetensors file (int, '5GB', '500MiB'); above it
      the weights are split into model-XXXXX-of-YYYYY.safetensors + an index.
    dtype: stored dtype ('float32', 'bfloat16', 'float16'); default cfg.param_dtype.
    family: HF family to export as; default cfg.family ('vit' for a ViTConfig).
    overwrite: replace an existing non-empty directory.
    extra_config: extra config.json fields (e.g. bos_token_id, id2label).
    copy_files: files copied unchanged into the directory, inside the same atomic write
      (e.g. a source's tokenizer and generation_config.json: `interop.companion_files`).

  Returns:
    The file names written inside `path`.

  Raises:
    ValueError: the config cannot be expressed by the family (names the fields),
      or a param leaf is missing / extra / misshapen.
    FileExistsError: `path` exists, is not empty and overwrite=False.
  """
  fam = _exportable_family(cfg, family)
  copies = {os.path.basename(os.fspath(f)): os.fspath(f) for f in copy_files}
  for name, f in copies.items():
    if name in (CONFIG, WEIGHTS, INDEX) or name.endswith('.safetensors'):
      raise ValueError(f'copy_files: {f!r} would replace the export\'s own {name}')
    if not os.path.isfile(f):
      raise FileNotFoundError(f'copy_files: {f!r} is not a file')
  d = hf_config(cfg, family, dtype, extra_config)
  np_dtype = jnp.dtype(d['dtype'])
  flat = _check_params(cfg, params)
  flat_s, flat_p = _layout(cfg)
  entries = _expand(fam, cfg, flat_s)
  expected = _expected(entries, flat_s, flat_p)
  limit, itemsize = parse_size(max_shard_size), np_dtype.itemsize
  shards, size = [[]], 0   # greedy: an entry's tensors stay together; a huge one gets its own file
  for e in entries:
    nbytes = sum(int(np.prod(expected[n])) * itemsize for n in e.hf)
    if shards[-1] and size + nbytes > limit:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += nbytes
  n = len(shards)
  names = [WEIGHTS] if n == 1 else [f'model-{k + 1:05d}-of-{n:05d}.safetensors' for k in range(n)]
  weight_map, total, t0 = {}, 0, time.perf_counter()
  with atomic_dir(os.fspath(path), overwrite) as tmp:
    with open(os.path.join(tmp, CONFIG), 'w') as f:
      json.dump(d, f, indent=2)
    for file, shard in zip(names, shards):
      tensors = {}
      for e in shard:
        xs = [np.asarray(flat[o]).astype(np_dtype, copy=False) for o in e.ours]
        ys = e.op.to_hf(xs, [flat_s[o] for o in e.ours])
        tensors.update({h: np.ascontiguousarray(y) for h, y in zip(e.hf, ys)})
      save_file(tensors, os.path.join(tmp, file), metadata={'format': 'pt'})
      weight_map.update({h: file for h in tensors})
      total += sum(y.nbytes for y in tensors.values())
      del tensors
      logging.info('save_hf %s: %s written (%d of %d files, %.2f GB so far, %.1f s)', path, file,
                   names.index(file) + 1, n, total / 1e9, time.perf_counter() - t0)
    if n > 1:
      with open(os.path.join(tmp, INDEX), 'w') as f:
        index = {'metadata': {'total_size': total}, 'weight_map': dict(sorted(weight_map.items()))}
        json.dump(index, f, indent=2)
    for name, f in copies.items():
      shutil.copyfile(f, os.path.join(tmp, name))
  return [CONFIG] + names + ([INDEX] if n > 1 else []) + sorted(copies)
