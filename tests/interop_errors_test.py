"""Hugging Face interop: bad input (unknown types, unsupported options, missing / extra / misshapen
tensors, broken directories, unexportable configs) raises clear errors; writes are atomic."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_testing import random_params
from hyperinit import interop, models
from hyperinit.interop import hf as hf_lib

_SMALL = dict(vocab_size=101, max_len=32, init='fan_in')


# --- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize('d,match', [
    ({'model_type': 'bert'}, r"unknown model_type 'bert'"),
    ({}, r'unknown model_type None'),
    ({'model_type': 'llama', 'rope_scaling': {'rope_type': 'linear', 'factor': 2.0}},
     r"rope_type='linear'"),
    ({'model_type': 'llama', 'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 5e5}},
     r"rope_type='llama3'"),
    ({'model_type': 'opt', 'hidden_size': 1024, 'word_embed_proj_dim': 512}, 'word_embed_proj_dim'),
    ({'model_type': 'opt', 'do_layer_norm_before': False}, 'do_layer_norm_before'),
    ({'model_type': 'olmo', 'clip_qkv': 8.0}, 'clip_qkv'),
    ({'model_type': 'llama', 'attention_bias': True}, 'mlp_bias'),
    ({'model_type': 'gpt2', 'scale_attn_by_inverse_layer_idx': True}, 'scale_attn_by_inverse'),
    ({'model_type': 'gpt_neox', 'hidden_act': 'quick_gelu'}, "hidden_act='quick_gelu'"),
])
def test_unsupported_hf_configs_are_refused(d, match):
  with pytest.raises(ValueError, match=match):
    interop.config_from_hf(d)


@pytest.fixture
def gpt2_ckpt(tmp_path):
  cfg = models.get_config('gpt2-tiny', **_SMALL, embed_dim=32, mlp_dim=64)
  interop.save_hf(tmp_path / 'ck', cfg, random_params(cfg))
  return tmp_path / 'ck'


def _edit_weights(path, fn):
  f = path / 'model.safetensors'
  t = load_file(f)
  fn(t)
  save_file(t, f, metadata={'format': 'pt'})


def test_unknown_model_type_in_directory(gpt2_ckpt):
  d = json.loads((gpt2_ckpt / 'config.json').read_text())
  d['model_type'] = 'mamba'
  (gpt2_ckpt / 'config.json').write_text(json.dumps(d))
  with pytest.raises(ValueError, match=r"unknown model_type 'mamba'.*supported: \['gpt2'"):
    interop.load_hf(gpt2_ckpt)


def test_missing_tensor(gpt2_ckpt):
  _edit_weights(gpt2_ckpt, lambda t: t.pop('transformer.h.1.mlp.c_fc.bias'))
  with pytest.raises(ValueError, match=r"missing tensors: 'transformer\.h\.1\.mlp\.c_fc\.bias' "
                                       r"\(expected shape \(64,\)\)"):
    interop.load_hf(gpt2_ckpt)


def test_extra_tensor(gpt2_ckpt):
  _edit_weights(gpt2_ckpt, lambda t: t.update({'transformer.h.0.attn.gate': np.ones((3, 2))}))
  with pytest.raises(ValueError, match=r"unexpected tensors: 'transformer\.h\.0\.attn\.gate' "
                                       r"with shape \(3, 2\)"):
    interop.load_hf(gpt2_ckpt)


def test_wrong_shape(gpt2_ckpt):
  _edit_weights(gpt2_ckpt, lambda t: t.update(
      {'transformer.h.0.mlp.c_fc.weight': np.zeros((32, 65), np.float32)}))
  with pytest.raises(ValueError, match=r"'transformer\.h\.0\.mlp\.c_fc\.weight' has shape "
                                       r"\(32, 65\) but the config expects \(32, 64\)"):
    interop.load_hf(gpt2_ckpt)


def test_config_and_tensors_disagree(gpt2_ckpt):
  d = json.loads((gpt2_ckpt / 'config.json').read_text())
  d['n_layer'] = 3
  (gpt2_ckpt / 'config.json').write_text(json.dumps(d))
  with pytest.raises(ValueError, match=r"missing tensors: 'transformer\.h\.2\.ln_1\.weight'"):
    interop.load_hf(gpt2_ckpt)


def test_missing_or_corrupt_directory(tmp_path, gpt2_ckpt):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    interop.load_hf(tmp_path / 'nope')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='config.json'):
    interop.load_hf(tmp_path / 'empty')
  (gpt2_ckpt / 'model.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":}xxx')
  with pytest.raises(ValueError, match='not a readable safetensors file'):
    interop.load_hf(gpt2_ckpt)
  (gpt2_ckpt / 'model.safetensors').unlink()
  with pytest.raises(FileNotFoundError, match='neither model.safetensors nor'):
    interop.load_hf(gpt2_ckpt)
  (gpt2_ckpt / 'config.json').write_text('{not json')
  with pytest.raises(ValueError, match='not valid JSON'):
    interop.load_hf(gpt2_ckpt)


def test_missing_shard(tmp_path):
  cfg = models.get_config('gpt2-tiny', **_SMALL, embed_dim=32, mlp_dim=64)
  files = interop.save_hf(tmp_path / 'ck', cfg, random_params(cfg), max_shard_size='10KB')
  shard = [f for f in files if f.startswith('model-')][1]
  (tmp_path / 'ck' / shard).unlink()
  with pytest.raises(FileNotFoundError, match=f'{shard}.*is missing'):
    interop.load_hf(tmp_path / 'ck')


@pytest.mark.parametrize('preset,kw,field', [
    ('gpt2-tiny', dict(head_dim=32), 'head_dim=32'),
    ('opt-tiny', dict(head_dim=8), 'head_dim=8'),
    ('pythia-tiny', dict(head_dim=32), 'head_dim=32'),
    ('olmo-tiny', dict(head_dim=32), 'head_dim=32'),
    ('llama-tiny', dict(rope_tile=2), 'rope_tile=2'),
    ('llama-tiny', dict(attn_scale='linear'), "attn_scale='linear'"),
    ('gpt2-tiny', dict(attn_mult=2.0), 'attn_mult=2.0'),
    ('opt-tiny', dict(logits_mult=0.5), 'logits_mult=0.5'),
    ('pythia-tiny', dict(embed_mult=10.0), 'embed_mult=10.0'),
    ('olmo-tiny', dict(residual_mult=0.5), 'residual_mult=0.5'),
    ('gpt2-tiny', dict(norm='rmsnorm'), "norm='rmsnorm'"),
    ('gpt2-tiny', dict(num_kv_heads=2), 'num_kv_heads=2'),
    ('opt-tiny', dict(norm_eps=1e-6), 'norm_eps=1e-06'),
    ('llama-tiny', dict(rotary_pct=0.5), 'rotary_pct=0.5'),
    ('llama-tiny', dict(parallel_residual=True), 'parallel_residual=True'),
    ('vit-tiny', dict(pool='gap'), "pool='gap'"),
])
def test_unexportable_configs_name_the_field(tmp_path, preset, kw, field):
  cfg = models.get_config(preset, **kw)
  assert interop.is_exportable(cfg) is False  # a predicate: bool, never raises
  with pytest.raises(ValueError, match=f'cannot be exported.*{field}'.replace('(', r'\(')):
    interop.require_exportable(cfg)
  with pytest.warns(DeprecationWarning, match='require_exportable'):
    with pytest.raises(ValueError, match='cannot be exported'):
      interop.check_exportable(cfg)  # the old name still raises, with a deprecation warning
  with pytest.raises(ValueError, match='cannot be exported'):
    interop.save_hf(tmp_path / 'out', cfg, random_params(cfg))
  assert os.listdir(tmp_path) == []  # nothing written, not even a temp dir


@pytest.mark.parametrize('preset', ['gpt2-tiny', 'llama-gqa-tiny', 'vit-tiny'])
def test_exportable_predicate_is_bool(preset):
  cfg = models.get_config(preset)
  assert interop.is_exportable(cfg) is True
  assert interop.require_exportable(cfg) is None
  assert interop.exportable_problems(cfg) == []


def test_export_checks_param_shapes(tmp_path):
  cfg = models.get_config('llama-tiny')
  params = random_params(cfg)
  params['block_1']['mlp']['wo']['kernel'] = np.zeros((100, 64), np.float32)
  with pytest.raises(ValueError, match=r"'block_1/mlp/wo/kernel' has shape \(100, 64\) but the "
                                       r"config expects \(192, 64\)"):
    interop.save_hf(tmp_path / 'out', cfg, params)
  del params['block_1']
  with pytest.raises(ValueError, match='missing leaves'):
    interop.save_hf(tmp_path / 'out', cfg, params)


def test_atomic_write_and_overwrite(tmp_path, monkeypatch):
  cfg = models.get_config('gpt2-tiny', **_SMALL, embed_dim=32, mlp_dim=64)
  p0 = random_params(cfg)
  p1 = random_params(cfg, 1)
  out = tmp_path / 'out'
  interop.save_hf(out, cfg, p0)
  with pytest.raises(FileExistsError, match='overwrite=True'):
    interop.save_hf(out, cfg, p1)
  # A failure half-way through a sharded write leaves the old export intact and no temp dirs.
  calls = []
  def failing_save(tensors, file, metadata=None):
    calls.append(file)
    if len(calls) == 2:
      raise OSError('disk full')
    return save_file(tensors, file, metadata=metadata)
  monkeypatch.setattr(hf_lib, "save_file", failing_save)
  with pytest.raises(OSError, match='disk full'):
    interop.save_hf(out, cfg, p1, overwrite=True, max_shard_size='10KB')
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ['out']
  back, _ = interop.load_hf(out)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, p0))
  interop.save_hf(out, cfg, p1, overwrite=True)
  back, _ = interop.load_hf(out)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, p1))
  assert sorted(os.listdir(tmp_path)) == ['out']
  (tmp_path / 'empty').mkdir()
  interop.save_hf(tmp_path / 'empty', cfg, p0)  # an empty directory is fine without overwrite


def test_parse_size():
  assert interop.parse_size('5GB') == 5 * 10**9
  assert interop.parse_size('500MiB') == 500 * 2**20
  assert interop.parse_size(1234) == 1234
  with pytest.raises(ValueError, match='max_shard_size'):
    interop.parse_size('lots')


def test_small_vocab_export_has_no_out_of_range_special_tokens():
  cfg = models.get_config('gpt2-tiny')
  d = interop.hf_config(cfg)
  assert d['bos_token_id'] is None and d['eos_token_id'] is None
  assert 'bos_token_id' not in interop.hf_config(models.get_config('gpt2', num_layers=1))


def test_copy_files_are_copied_atomically_and_cannot_replace_the_export(tmp_path):
  cfg = models.get_config('gpt2-tiny', **_SMALL, embed_dim=32, mlp_dim=64)
  src = tmp_path / 'src'
  src.mkdir()
  (src / 'tokenizer.json').write_text('{"version": "1.0"}')
  (src / 'generation_config.json').write_text('{"max_new_tokens": 3}')
  (src / 'notes.txt').write_text('not a companion file')
  files = interop.companion_files(src)
  assert sorted(os.path.basename(f) for f in files) == ['generation_config.json', 'tokenizer.json']
  written = interop.save_hf(tmp_path / 'out', cfg, random_params(cfg), copy_files=files)
  assert written == ['config.json', 'model.safetensors', 'generation_config.json',
                     'tokenizer.json']
  assert (tmp_path / 'out' / 'tokenizer.json').read_text() == '{"version": "1.0"}'
  (src / 'config.json').write_text('{}')
  with pytest.raises(ValueError, match="would replace the export's own config.json"):
    interop.save_hf(tmp_path / 'out2', cfg, random_params(cfg), copy_files=[src / 'config.json'])
  with pytest.raises(FileNotFoundError, match='is not a file'):
    interop.save_hf(tmp_path / 'out2', cfg, random_params(cfg), copy_files=[src / 'nope.json'])
  assert not (tmp_path / 'out2').exists()
