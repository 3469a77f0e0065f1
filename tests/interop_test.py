"""Hugging Face interop: logits against transformers (CPU torch), sharding, dtypes, errors.

Tolerance for every logits comparison (fp32): max |ours - theirs| <= 1e-4 * max |theirs|.
The numerics tests skip (with a reason) only where torch / transformers are not installed.
"""

import json
import math
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hyperinit import interop, models, spec
from hyperinit.interop import hf as hf_lib

TOKENS = np.random.RandomState(0).randint(0, 101, size=(2, 11))
IMAGES = np.random.RandomState(1).randn(2, 16, 16, 3).astype(np.float32)


def _hf():
  torch = pytest.importorskip('torch', reason='torch is not installed (pip install .[hf])')
  transformers = pytest.importorskip('transformers', reason='transformers is not installed')
  return torch, transformers


_APPLY = {}


def _ours(cfg, params):
  """Our logits; one compiled function per config."""
  if cfg not in _APPLY:
    _APPLY[cfg] = models.apply_fn(cfg)
  x = IMAGES if isinstance(cfg, models.ViTConfig) else TOKENS
  return np.asarray(_APPLY[cfg](params, x))


def _theirs(torch, model, is_vit=False):
  model.eval()
  with torch.no_grad():
    if is_vit:
      return model(pixel_values=torch.from_numpy(IMAGES.transpose(0, 3, 1, 2))).logits.numpy()
    return model(input_ids=torch.from_numpy(TOKENS)).logits.numpy()


def _assert_close(ours, theirs, tol=1e-4):
  assert ours.shape == theirs.shape
  scale = float(np.abs(theirs).max())
  assert scale > 0.1, 'degenerate logits: the comparison would be weak'
  err = float(np.abs(ours - theirs).max())
  assert err <= tol * scale, f'max abs error {err:.3g} > {tol} * max |logit| {scale:.3g}'


def _randomize_torch(torch, model, seed=0):
  """O(1) activations and non-trivial norm gains / biases: every parameter matters."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if p.ndim == 1:
        p.copy_((1.0 if name.endswith('weight') else 0.0) + 0.2 * noise)
      else:
        p.copy_(noise / math.sqrt(p[0].numel()))


def _random_params(cfg, seed=0):
  """Random params drawn on the host (no init compile): var 1/fan_in for matrices, gains
  1 + 0.2 N(0, 1), biases / cls token 0.2 N(0, 1)."""
  rng = np.random.RandomState(seed)
  def one(path, s, shape):
    x = rng.randn(*shape.shape)
    if s.fan_in:
      x = x / math.sqrt(math.prod(shape.shape[i] for i in s.fan_in))
    else:
      x = (1.0 if spec.path_str(path).endswith('scale') else 0.0) + 0.2 * x
    return x.astype(shape.dtype)
  return jax.tree_util.tree_map_with_path(one, models.param_specs(cfg), models.param_shapes(cfg),
                                          is_leaf=spec.is_spec)


# --- (a) transformers-created checkpoint -> load_hf -> our logits == theirs ----------------

_TOK = dict(bos_token_id=0, eos_token_id=0, pad_token_id=None)
HF_CASES = {
    'gpt2': lambda T: T.GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                   **_TOK),
    'gpt2-untied': lambda T: T.GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2,
                                          n_head=4, n_inner=48, tie_word_embeddings=False, **_TOK),
    'opt': lambda T: T.OPTConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                 max_position_embeddings=32, num_attention_heads=4, **_TOK),
    'opt-nobias-nonparam-untied': lambda T: T.OPTConfig(
        vocab_size=101, hidden_size=32, num_hidden_layers=2, ffn_dim=64, max_position_embeddings=32,
        num_attention_heads=4, enable_bias=False, layer_norm_elementwise_affine=False,
        tie_word_embeddings=False, activation_function='gelu', **_TOK),
    'gpt_neox': lambda T: T.GPTNeoXConfig(
        vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=32,
        rope_parameters={'rope_type': 'default', 'rope_theta': 500.0, 'partial_rotary_factor': 0.5},
        **_TOK),
    'gpt_neox-sequential-tied-legacy': lambda T: T.GPTNeoXConfig(
        vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=32, use_parallel_residual=False,
        tie_word_embeddings=True, rotary_pct=0.25, rotary_emb_base=1000, **_TOK),
    'llama-gqa-untied-headdim': lambda T: T.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=32,
        rms_norm_eps=1e-5, rope_parameters={'rope_type': 'default', 'rope_theta': 5e5}, **_TOK),
    'llama-mqa-tied-bias': lambda T: T.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32,
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True, **_TOK),
    'olmo-gqa': lambda T: T.OlmoConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, **_TOK),
    'olmo-tied': lambda T: T.OlmoConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, tie_word_embeddings=True,
        rope_parameters={'rope_type': 'default', 'rope_theta': 1e4}, **_TOK),
    'vit': lambda T: T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, image_size=16, patch_size=4, num_labels=5),
}


def _hf_model(T, name):
  c = HF_CASES[name](T)
  if name == 'vit':
    return T.ViTForImageClassification(c)
  return T.AutoModelForCausalLM.from_config(c, attn_implementation='eager')


@pytest.mark.parametrize('name', sorted(HF_CASES))
def test_import_matches_transformers(name, tmp_path):
  torch, T = _hf()
  model = _hf_model(T, name)
  _randomize_torch(torch, model)
  model.save_pretrained(tmp_path)  # safetensors
  cfg, params = interop.load_hf(tmp_path)
  assert cfg.param_dtype == 'float32'
  _assert_close(_ours(cfg, params), _theirs(torch, model, name == 'vit'))


def test_import_reads_the_config_fields(tmp_path):
  torch, T = _hf()
  model = _hf_model(T, 'llama-gqa-untied-headdim')
  model.save_pretrained(tmp_path)
  cfg, _ = interop.load_hf(tmp_path)
  assert (cfg.family, cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.norm_eps,
          cfg.tie_embeddings, cfg.vocab_size) == ('llama', 2, 16, 5e5, 1e-5, False, 101)


def test_bf16_checkpoint_import(tmp_path):
  torch, T = _hf()
  model = _hf_model(T, 'gpt_neox')
  _randomize_torch(torch, model, seed=3)
  model.to(torch.bfloat16).save_pretrained(tmp_path)
  # Reference: transformers itself, upcasting the bf16 checkpoint to fp32.
  ref = T.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                               attn_implementation='eager')
  cfg, params = interop.load_hf(tmp_path)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  _assert_close(_ours(cfg, params), _theirs(torch, ref))
  cfg16, p16 = interop.load_hf(tmp_path, param_dtype='bfloat16')
  assert cfg16.param_dtype == 'bfloat16'
  assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(p16))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(np.float32), b), p16, params)


# --- (b) our params -> save_hf -> transformers from_pretrained logits == ours --------------

_SMALL = dict(vocab_size=101, max_len=32, init='fan_in')
OUR_CASES = {
    'gpt2': ('gpt2-tiny', dict(embed_dim=32, mlp_dim=64)),
    'gpt2-untied-relu': ('gpt2-tiny', dict(embed_dim=32, mlp_dim=64, tie_embeddings=False,
                                           activation='relu')),
    'opt': ('opt-tiny', dict(embed_dim=32, mlp_dim=64)),
    'opt-nonparam-nobias': ('opt-tiny', dict(embed_dim=32, mlp_dim=64, norm='layernorm_nonparam',
                                             use_bias=False)),
    'pythia': ('pythia-tiny', dict(mlp_dim=96, rope_theta=500.0)),
    'pythia-sequential-tied': ('pythia-tiny', dict(parallel_residual=False, tie_embeddings=True,
                                                   rotary_pct=0.5)),
    'llama-gqa-headdim': ('llama-gqa-tiny', dict(embed_dim=32, head_dim=16, mlp_dim=64)),
    'llama-mqa-tied': ('llama-mqa-tiny', dict(embed_dim=32, mlp_dim=64, use_bias=True)),
    'llama-untied': ('llama-tiny', dict(embed_dim=32, mlp_dim=64, rope_theta=5e5)),
    'olmo': ('olmo-tiny', dict(embed_dim=32, mlp_dim=64, num_kv_heads=2)),
    'olmo-untied': ('olmo-tiny', dict(embed_dim=32, mlp_dim=64, tie_embeddings=False)),
    'vit': ('vit-tiny', dict(embed_dim=32, mlp_dim=64, image_size=16, num_classes=5,
                             init='fan_in')),
}


def _our_cfg(name):
  preset, kw = OUR_CASES[name]
  return models.get_config(preset, **({} if preset.startswith('vit') else _SMALL), **kw)


def _from_pretrained(T, torch, path, is_vit):
  cls = T.ViTForImageClassification if is_vit else T.AutoModelForCausalLM
  model, info = cls.from_pretrained(path, dtype=torch.float32, attn_implementation='eager',
                                    output_loading_info=True)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys')), info
  return model


@pytest.mark.parametrize('name', sorted(OUR_CASES))
def test_export_loads_in_transformers(name, tmp_path):
  torch, T = _hf()
  cfg = _our_cfg(name)
  params = _random_params(cfg)
  interop.save_hf(tmp_path / 'out', cfg, params)
  is_vit = isinstance(cfg, models.ViTConfig)
  model = _from_pretrained(T, torch, tmp_path / 'out', is_vit)
  _assert_close(_ours(cfg, params), _theirs(torch, model, is_vit))


def test_sharded_export_and_import(tmp_path):
  torch, T = _hf()
  cfg = _our_cfg('llama-gqa-headdim')
  params = _random_params(cfg, seed=5)
  files = interop.save_hf(tmp_path / 'out', cfg, params, max_shard_size=20_000)
  shards = [f for f in files if f.startswith('model-')]
  assert len(shards) > 2 and 'model.safetensors.index.json' in files
  for f in shards:  # each shard within the limit, unless one tensor group (gate+up) exceeds it
    tensors = load_file(tmp_path / 'out' / f)
    assert sum(t.nbytes for t in tensors.values()) <= 20_000 or len(tensors) <= 2, f
  index = json.loads((tmp_path / 'out' / 'model.safetensors.index.json').read_text())
  assert sorted(set(index['weight_map'].values())) == shards
  model = _from_pretrained(T, torch, tmp_path / 'out', False)
  _assert_close(_ours(cfg, params), _theirs(torch, model))
  cfg2, back = interop.load_hf(tmp_path / 'out')
  assert cfg2 == cfg.replace(init='normal')  # init is a training choice, not exported
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


def test_bf16_export_is_read_by_transformers(tmp_path):
  torch, T = _hf()
  cfg = _our_cfg('pythia')
  params = _random_params(cfg, seed=2)
  interop.save_hf(tmp_path / 'out', cfg, params, dtype='bfloat16')
  assert json.loads((tmp_path / 'out' / 'config.json').read_text())['dtype'] == 'bfloat16'
  model = _from_pretrained(T, torch, tmp_path / 'out', False)  # upcast to fp32 by transformers
  rounded = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16).astype(np.float32), params)
  _assert_close(_ours(cfg, rounded), _theirs(torch, model))
  cfg16, p16 = interop.load_hf(tmp_path / 'out', param_dtype='bfloat16')
  assert cfg16 == cfg.replace(param_dtype='bfloat16', init='normal')
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(np.float32), b), p16, rounded)


# --- layouts, legacy names, no torch needed -------------------------------------------------

def test_scanned_layout_round_trip(tmp_path):
  cfg = _our_cfg('llama-gqa-headdim').replace(scan_layers=True)
  flat = _random_params(cfg.replace(scan_layers=False), seed=1)
  params = interop.stack_layers(flat, cfg.num_layers)
  assert params['blocks']['attn']['query']['kernel'].shape == (2, 32, 4, 16)
  interop.save_hf(tmp_path / 'out', cfg, params)
  cfg2, back = interop.load_hf(tmp_path / 'out', scan_layers=True)
  assert cfg2 == cfg.replace(init='normal')
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  _, unscanned = interop.load_hf(tmp_path / 'out')
  jax.tree.map(np.testing.assert_array_equal, unscanned,
               interop.unstack_layers(back, cfg.num_layers))


def test_legacy_names_and_buffers_are_accepted(tmp_path):
  cfg = _our_cfg('gpt2')
  params = _random_params(cfg)
  interop.save_hf(tmp_path / 'ck', cfg, params)
  f = tmp_path / 'ck' / 'model.safetensors'
  t = load_file(f)
  # GPT2Model checkpoints (openai-community/gpt2): no 'transformer.' prefix, causal-mask buffers.
  t = {k.removeprefix('transformer.'): v for k, v in t.items()}
  t['h.0.attn.bias'] = np.ones((1, 1, 32, 32), np.float32)
  save_file(t, f, metadata={'format': 'pt'})
  _, back = interop.load_hf(tmp_path / 'ck')
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


def test_vit_state_dict_names_are_accepted(tmp_path):
  cfg = _our_cfg('vit')
  params = _random_params(cfg)
  interop.save_hf(tmp_path / 'ck', cfg, params)
  f = tmp_path / 'ck' / 'model.safetensors'
  # transformers 5 module names (ViTForImageClassification.state_dict()) and a ViTModel pooler.
  renames = [('vit.encoder.layer.', 'vit.layers.'), ('attention.attention.query', 'attention.q_proj'),
             ('attention.attention.key', 'attention.k_proj'),
             ('attention.attention.value', 'attention.v_proj'),
             ('attention.output.dense', 'attention.o_proj'), ('intermediate.dense', 'mlp.fc1'),
             ('output.dense', 'mlp.fc2')]
  t = {}
  for k, v in load_file(f).items():
    for a, b in renames:
      k = k.replace(a, b)
    t[k] = v
  assert 'vit.layers.1.mlp.fc2.weight' in t
  t['vit.pooler.dense.weight'] = np.zeros((32, 32), np.float32)
  save_file(t, f, metadata={'format': 'pt'})
  _, back = interop.load_hf(tmp_path / 'ck')
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


@pytest.mark.parametrize('d,field,value', [
    ({'model_type': 'llama', 'rope_theta': 5e5}, 'rope_theta', 5e5),
    ({'model_type': 'llama', 'rope_theta': 5e5,
      'rope_parameters': {'rope_type': 'default', 'rope_theta': 1e6}}, 'rope_theta', 1e6),
    ({'model_type': 'gpt_neox', 'rotary_pct': 0.5, 'rotary_emb_base': 100}, 'rotary_pct', 0.5),
    ({'model_type': 'gpt_neox', 'rotary_pct': 0.5, 'rotary_emb_base': 100}, 'rope_theta', 100.0),
    ({'model_type': 'gpt_neox', 'rope_parameters': {'rope_theta': 7.0}}, 'rotary_pct', 0.25),
    ({'model_type': 'llama', 'num_attention_heads': 8, 'num_key_value_heads': 8}, 'num_kv_heads',
     None),
    ({'model_type': 'opt', 'layer_norm_elementwise_affine': False}, 'norm', 'layernorm_nonparam'),
])
def test_config_fields(d, field, value):
  assert getattr(interop.config_from_hf(d), field) == value


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
  interop.save_hf(tmp_path / 'ck', cfg, _random_params(cfg))
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
  files = interop.save_hf(tmp_path / 'ck', cfg, _random_params(cfg), max_shard_size='10KB')
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
  with pytest.raises(ValueError, match=f'cannot be exported.*{field}'.replace('(', r'\(')):
    interop.check_exportable(cfg)
  with pytest.raises(ValueError, match='cannot be exported'):
    interop.save_hf(tmp_path / 'out', cfg, _random_params(cfg))
  assert os.listdir(tmp_path) == []  # nothing written, not even a temp dir


def test_export_checks_param_shapes(tmp_path):
  cfg = models.get_config('llama-tiny')
  params = _random_params(cfg)
  params['block_1']['mlp']['wo']['kernel'] = np.zeros((100, 64), np.float32)
  with pytest.raises(ValueError, match=r"'block_1/mlp/wo/kernel' has shape \(100, 64\) but the "
                                       r"config expects \(192, 64\)"):
    interop.save_hf(tmp_path / 'out', cfg, params)
  del params['block_1']
  with pytest.raises(ValueError, match='missing leaves'):
    interop.save_hf(tmp_path / 'out', cfg, params)


def test_atomic_write_and_overwrite(tmp_path, monkeypatch):
  cfg = models.get_config('gpt2-tiny', **_SMALL, embed_dim=32, mlp_dim=64)
  p0 = _random_params(cfg)
  p1 = _random_params(cfg, 1)
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
  _, back = interop.load_hf(out)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, p0))
  interop.save_hf(out, cfg, p1, overwrite=True)
  _, back = interop.load_hf(out)
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
