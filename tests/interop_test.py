"""Hugging Face interop: logits against transformers (CPU torch), sharding, dtypes, layouts.

Bad input and atomic writes: interop_errors_test.py.

Tolerance for every logits comparison (fp32): max |ours - theirs| <= 1e-4 * max |theirs|.
The numerics tests skip (with a reason) only where torch / transformers are not installed.
"""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_testing import TOK_IDS, TOKENS, random_params, randomize_torch, require_hf
from hyperinit import interop, models

IMAGES = np.random.RandomState(1).randn(2, 16, 16, 3).astype(np.float32)


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


# --- (a) transformers-created checkpoint -> load_hf -> our logits == theirs ----------------

HF_CASES = {
    'gpt2': lambda T: T.GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                   **TOK_IDS),
    'gpt2-untied': lambda T: T.GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2,
                                          n_head=4, n_inner=48, tie_word_embeddings=False,
                                          **TOK_IDS),
    'opt': lambda T: T.OPTConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                 max_position_embeddings=32, num_attention_heads=4, **TOK_IDS),
    'opt-nobias-nonparam-untied': lambda T: T.OPTConfig(
        vocab_size=101, hidden_size=32, num_hidden_layers=2, ffn_dim=64, max_position_embeddings=32,
        num_attention_heads=4, enable_bias=False, layer_norm_elementwise_affine=False,
        tie_word_embeddings=False, activation_function='gelu', **TOK_IDS),
    'gpt_neox': lambda T: T.GPTNeoXConfig(
        vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=32,
        rope_parameters={'rope_type': 'default', 'rope_theta': 500.0, 'partial_rotary_factor': 0.5},
        **TOK_IDS),
    'gpt_neox-sequential-tied-legacy': lambda T: T.GPTNeoXConfig(
        vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=32, use_parallel_residual=False,
        tie_word_embeddings=True, rotary_pct=0.25, rotary_emb_base=1000, **TOK_IDS),
    'llama-gqa-untied-headdim': lambda T: T.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=32,
        rms_norm_eps=1e-5, rope_parameters={'rope_type': 'default', 'rope_theta': 5e5}, **TOK_IDS),
    'llama-mqa-tied-bias': lambda T: T.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32,
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True, **TOK_IDS),
    'olmo-gqa': lambda T: T.OlmoConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, **TOK_IDS),
    'olmo-tied': lambda T: T.OlmoConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, tie_word_embeddings=True,
        rope_parameters={'rope_type': 'default', 'rope_theta': 1e4}, **TOK_IDS),
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
  torch, T = require_hf()
  model = _hf_model(T, name)
  randomize_torch(torch, model)
  model.save_pretrained(tmp_path)  # safetensors
  params, cfg = interop.load_hf(tmp_path)
  assert cfg.param_dtype == 'float32'
  _assert_close(_ours(cfg, params), _theirs(torch, model, name == 'vit'))


def test_import_reads_the_config_fields(tmp_path):
  torch, T = require_hf()
  model = _hf_model(T, 'llama-gqa-untied-headdim')
  model.save_pretrained(tmp_path)
  _, cfg = interop.load_hf(tmp_path)
  assert (cfg.family, cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.norm_eps,
          cfg.tie_embeddings, cfg.vocab_size) == ('llama', 2, 16, 5e5, 1e-5, False, 101)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_half_precision_checkpoint_import(dtype, tmp_path):
  torch, T = require_hf()
  model = _hf_model(T, 'gpt_neox')
  randomize_torch(torch, model, seed=3)
  model.to(getattr(torch, dtype)).save_pretrained(tmp_path)
  # Reference: transformers itself, upcasting the half-precision checkpoint to fp32.
  ref = T.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                               attn_implementation='eager')
  params, cfg = interop.load_hf(tmp_path)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  _assert_close(_ours(cfg, params), _theirs(torch, ref))
  p16, cfg16 = interop.load_hf(tmp_path, param_dtype=dtype)
  assert cfg16.param_dtype == dtype
  assert all(x.dtype == jax.numpy.dtype(dtype) for x in jax.tree.leaves(p16))
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
  torch, T = require_hf()
  cfg = _our_cfg(name)
  params = random_params(cfg)
  interop.save_hf(tmp_path / 'out', cfg, params)
  is_vit = isinstance(cfg, models.ViTConfig)
  model = _from_pretrained(T, torch, tmp_path / 'out', is_vit)
  _assert_close(_ours(cfg, params), _theirs(torch, model, is_vit))


def test_sharded_export_and_import(tmp_path):
  torch, T = require_hf()
  cfg = _our_cfg('llama-gqa-headdim')
  params = random_params(cfg, seed=5)
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
  back, cfg2 = interop.load_hf(tmp_path / 'out')
  assert cfg2 == cfg.replace(init='normal')  # init is a training choice, not exported
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_half_precision_export_is_read_by_transformers(dtype, tmp_path):
  torch, T = require_hf()
  cfg = _our_cfg('pythia')
  params = random_params(cfg, seed=2)
  interop.save_hf(tmp_path / 'out', cfg, params, dtype=dtype)
  assert json.loads((tmp_path / 'out' / 'config.json').read_text())['dtype'] == dtype
  model = _from_pretrained(T, torch, tmp_path / 'out', False)  # upcast to fp32 by transformers
  rounded = jax.tree.map(lambda x: x.astype(jax.numpy.dtype(dtype)).astype(np.float32), params)
  _assert_close(_ours(cfg, rounded), _theirs(torch, model))
  p16, cfg16 = interop.load_hf(tmp_path / 'out', param_dtype=dtype)
  assert cfg16 == cfg.replace(param_dtype=dtype, init='normal')
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(np.float32), b), p16, rounded)


# --- layouts, legacy names, no torch needed -------------------------------------------------

def test_scanned_layout_round_trip(tmp_path):
  cfg = _our_cfg('llama-gqa-headdim').replace(scan_layers=True)
  flat = random_params(cfg.replace(scan_layers=False), seed=1)
  params = interop.stack_layers(flat, cfg.num_layers)
  assert params['blocks']['attn']['query']['kernel'].shape == (2, 32, 4, 16)
  interop.save_hf(tmp_path / 'out', cfg, params)
  back, cfg2 = interop.load_hf(tmp_path / 'out', scan_layers=True)
  assert cfg2 == cfg.replace(init='normal')
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  unscanned, _ = interop.load_hf(tmp_path / 'out')
  jax.tree.map(np.testing.assert_array_equal, unscanned,
               interop.unstack_layers(back, cfg.num_layers))


def test_legacy_names_and_buffers_are_accepted(tmp_path):
  cfg = _our_cfg('gpt2')
  params = random_params(cfg)
  interop.save_hf(tmp_path / 'ck', cfg, params)
  f = tmp_path / 'ck' / 'model.safetensors'
  t = load_file(f)
  # GPT2Model checkpoints (openai-community/gpt2): no 'transformer.' prefix, causal-mask buffers.
  t = {k.removeprefix('transformer.'): v for k, v in t.items()}
  t['h.0.attn.bias'] = np.ones((1, 1, 32, 32), np.float32)
  save_file(t, f, metadata={'format': 'pt'})
  back, _ = interop.load_hf(tmp_path / 'ck')
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


def test_vit_state_dict_names_are_accepted(tmp_path):
  cfg = _our_cfg('vit')
  params = random_params(cfg)
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
  back, _ = interop.load_hf(tmp_path / 'ck')
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
