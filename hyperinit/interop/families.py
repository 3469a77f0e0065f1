"""Causal-LM families: GPT-2, OPT, GPT-NeoX/Pythia, Llama, OLMo (plus the ViT registry entry).

This and `vit.py` are the one place in hyperinit that names parameters per
family; see `base.Family` for what each table holds.
"""

from __future__ import annotations

from hyperinit.interop.base import (ACT_TO_HF, LINEAR, MHA, PLAIN, STANDARD_HEAD_DIM, Family, act,
                                    dense, get, kv_and_head_dim, norm_pair, qkv, require, rope,
                                    rope_params, transformer)
from hyperinit.interop.convert import Concat, HeadInterleave, Unfuse, rows
from hyperinit.interop.vit import VIT
from hyperinit.models.config import ModelConfig, ViTConfig


# --- GPT-2 ---------------------------------------------------------------------------

def _gpt2_from_hf(d):
  require(d, 'gpt2', scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
           add_cross_attention=False)
  embed = get(d, 'n_embd', 'hidden_size', default=768)
  return transformer(
      'gpt2', vocab_size=get(d, 'vocab_size', default=50257),
      max_len=get(d, 'n_positions', 'max_position_embeddings', default=1024),
      num_layers=get(d, 'n_layer', 'num_hidden_layers', default=12), embed_dim=embed,
      num_heads=get(d, 'n_head', 'num_attention_heads', default=12),
      mlp_dim=get(d, 'n_inner', default=4 * embed),
      activation=act(d, 'activation_function', 'gelu_new', 'gpt2'),
      norm_eps=float(get(d, 'layer_norm_epsilon', default=1e-5)),
      tie_embeddings=bool(d.get('tie_word_embeddings', True)),
      init_std=float(get(d, 'initializer_range', default=0.02)))


def _gpt2_to_hf(cfg):
  return dict(vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.embed_dim,
              n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.mlp_dim,
              activation_function=ACT_TO_HF[cfg.activation], layer_norm_epsilon=cfg.norm_eps,
              initializer_range=cfg.init_std, resid_pdrop=cfg.dropout_rate,
              embd_pdrop=cfg.dropout_rate, attn_pdrop=0.0, scale_attn_weights=True,
              scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
              add_cross_attention=False)


GPT2 = Family(
    'gpt2', 'GPT2LMHeadModel',
    top=rows(('transformer.wte.weight', 'token_embed/embedding', PLAIN),
             ('transformer.wpe.weight', 'pos_embed/embedding', PLAIN),
             *norm_pair('transformer.ln_f', 'final_norm'),
             ('lm_head.weight', 'lm_head/kernel', LINEAR)),
    layer=rows(*norm_pair('transformer.h.{i}.ln_1', 'attn_norm'),
               ('transformer.h.{i}.attn.c_attn.weight', qkv('kernel'), Concat()),
               ('transformer.h.{i}.attn.c_attn.bias', qkv('bias'), Concat()),
               *dense('transformer.h.{i}.attn.c_proj', 'attn/out', PLAIN),  # Conv1D: (in, out)
               *norm_pair('transformer.h.{i}.ln_2', 'mlp_norm'),
               *dense('transformer.h.{i}.mlp.c_fc', 'mlp/wi', PLAIN),
               *dense('transformer.h.{i}.mlp.c_proj', 'mlp/wo', PLAIN)),
    from_hf=_gpt2_from_hf, to_hf=_gpt2_to_hf,
    fixed=dict(norm=('layernorm',), gated_mlp=(False,), use_bias=(True,),
               parallel_residual=(False,), position=('learned',), position_offset=(0,),
               head_dim=STANDARD_HEAD_DIM, num_kv_heads=MHA),
    # GPT2Model checkpoints (e.g. openai-community/gpt2) have no 'transformer.' prefix.
    renames=((r'^(?!transformer\.|lm_head\.)', 'transformer.'),),
    ignore=(r'\.attn\.bias$', r'\.attn\.masked_bias$'), tied_head='lm_head.weight')


# --- OPT -----------------------------------------------------------------------------

def _opt_from_hf(d):
  require(d, 'opt', do_layer_norm_before=True, _remove_final_layer_norm=False)
  embed = get(d, 'hidden_size', default=768)
  proj = get(d, 'word_embed_proj_dim', default=embed)
  if proj != embed:
    raise ValueError(f'opt config.json has word_embed_proj_dim={proj} != hidden_size={embed} '
                     '(projected embeddings, e.g. opt-350m); hyperinit does not implement them')
  return transformer(
      'opt', vocab_size=get(d, 'vocab_size', default=50272),
      max_len=get(d, 'max_position_embeddings', default=2048),
      num_layers=get(d, 'num_hidden_layers', default=12), embed_dim=embed,
      num_heads=get(d, 'num_attention_heads', default=12), mlp_dim=get(d, 'ffn_dim', default=3072),
      activation=act(d, 'activation_function', 'relu', 'opt'),
      use_bias=bool(d.get('enable_bias', True)),
      norm='layernorm' if d.get('layer_norm_elementwise_affine', True) else 'layernorm_nonparam',
      norm_eps=1e-5, tie_embeddings=bool(d.get('tie_word_embeddings', True)),
      init_std=float(get(d, 'init_std', default=0.02)))


def _opt_to_hf(cfg):
  return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim,
              num_hidden_layers=cfg.num_layers, ffn_dim=cfg.mlp_dim,
              max_position_embeddings=cfg.max_len, do_layer_norm_before=True,
              _remove_final_layer_norm=False, word_embed_proj_dim=cfg.embed_dim,
              num_attention_heads=cfg.num_heads, activation_function=ACT_TO_HF[cfg.activation],
              enable_bias=cfg.use_bias,
              layer_norm_elementwise_affine=cfg.norm == 'layernorm', init_std=cfg.init_std,
              dropout=cfg.dropout_rate, attention_dropout=0.0, layerdrop=0.0)


OPT = Family(
    'opt', 'OPTForCausalLM',
    top=rows(('model.decoder.embed_tokens.weight', 'token_embed/embedding', PLAIN),
             ('model.decoder.embed_positions.weight', 'pos_embed/embedding', PLAIN),
             *norm_pair('model.decoder.final_layer_norm', 'final_norm'),
             ('lm_head.weight', 'lm_head/kernel', LINEAR)),
    layer=rows(*dense('model.decoder.layers.{i}.self_attn.q_proj', 'attn/query'),
               *dense('model.decoder.layers.{i}.self_attn.k_proj', 'attn/key'),
               *dense('model.decoder.layers.{i}.self_attn.v_proj', 'attn/value'),
               *dense('model.decoder.layers.{i}.self_attn.out_proj', 'attn/out'),
               *norm_pair('model.decoder.layers.{i}.self_attn_layer_norm', 'attn_norm'),
               *dense('model.decoder.layers.{i}.fc1', 'mlp/wi'),
               *dense('model.decoder.layers.{i}.fc2', 'mlp/wo'),
               *norm_pair('model.decoder.layers.{i}.final_layer_norm', 'mlp_norm')),
    from_hf=_opt_from_hf, to_hf=_opt_to_hf,
    fixed=dict(norm=('layernorm', 'layernorm_nonparam'), norm_eps=(1e-5,), gated_mlp=(False,),
               parallel_residual=(False,), position=('learned',), position_offset=(2,),
               head_dim=STANDARD_HEAD_DIM, num_kv_heads=MHA),
    renames=((r'^decoder\.', 'model.decoder.'),), tied_head='lm_head.weight')


# --- GPT-NeoX / Pythia ----------------------------------------------------------------

def _neox_from_hf(d):
  # The MLP always has biases, so attention biases must be on for one use_bias to cover both.
  require(d, 'gpt_neox', attention_bias=True)
  theta, pct = rope(d, 'gpt_neox', 'rotary_emb_base', 'rotary_pct', 0.25)
  return transformer(
      'gpt_neox', vocab_size=get(d, 'vocab_size', default=50432),
      max_len=get(d, 'max_position_embeddings', default=2048),
      num_layers=get(d, 'num_hidden_layers', default=44),
      embed_dim=get(d, 'hidden_size', default=6144),
      num_heads=get(d, 'num_attention_heads', default=64),
      mlp_dim=get(d, 'intermediate_size', default=24576),
      activation=act(d, 'hidden_act', 'gelu', 'gpt_neox'),
      norm_eps=float(get(d, 'layer_norm_eps', default=1e-5)),
      parallel_residual=bool(d.get('use_parallel_residual', True)), rope_theta=theta,
      rotary_pct=pct, tie_embeddings=bool(d.get('tie_word_embeddings', False)),
      init_std=float(get(d, 'initializer_range', default=0.02)))


def _neox_to_hf(cfg):
  return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              intermediate_size=cfg.mlp_dim,
              hidden_act=ACT_TO_HF[cfg.activation], max_position_embeddings=cfg.max_len,
              layer_norm_eps=cfg.norm_eps, use_parallel_residual=cfg.parallel_residual,
              rope_parameters=rope_params(cfg, partial=True), attention_bias=True,
              # transformers 4.x spellings (5.x reads rope_parameters first)
              rotary_emb_base=float(cfg.rope_theta), rotary_pct=float(cfg.rotary_pct),
              initializer_range=cfg.init_std, hidden_dropout=cfg.dropout_rate,
              attention_dropout=0.0)


_NEOX_L = 'gpt_neox.layers.{i}'
GPT_NEOX = Family(
    'gpt_neox', 'GPTNeoXForCausalLM',
    top=rows(('gpt_neox.embed_in.weight', 'token_embed/embedding', PLAIN),
             *norm_pair('gpt_neox.final_layer_norm', 'final_norm'),
             ('embed_out.weight', 'lm_head/kernel', LINEAR)),
    layer=rows(*norm_pair(f'{_NEOX_L}.input_layernorm', 'attn_norm'),
               *norm_pair(f'{_NEOX_L}.post_attention_layernorm', 'mlp_norm'),
               (f'{_NEOX_L}.attention.query_key_value.weight', qkv('kernel'), HeadInterleave()),
               (f'{_NEOX_L}.attention.query_key_value.bias', qkv('bias'), HeadInterleave()),
               *dense(f'{_NEOX_L}.attention.dense', 'attn/out'),
               *dense(f'{_NEOX_L}.mlp.dense_h_to_4h', 'mlp/wi'),
               *dense(f'{_NEOX_L}.mlp.dense_4h_to_h', 'mlp/wo')),
    from_hf=_neox_from_hf, to_hf=_neox_to_hf,
    fixed=dict(norm=('layernorm',), gated_mlp=(False,), use_bias=(True,), position=('rope',),
               head_dim=STANDARD_HEAD_DIM, num_kv_heads=MHA),
    renames=((r'^lm_head\.', 'embed_out.'), (r'^(?!gpt_neox\.|embed_out\.)', 'gpt_neox.')),
    ignore=(r'\.attention\.bias$', r'\.attention\.masked_bias$', r'\.rotary_emb\.inv_freq$'),
    tied_head='embed_out.weight')


# --- Llama and OLMo -------------------------------------------------------------------

def _llama_from_hf(d):
  attn_bias, mlp_bias = bool(d.get('attention_bias', False)), bool(d.get('mlp_bias', False))
  if attn_bias != mlp_bias:
    raise ValueError(f'llama config.json has attention_bias={attn_bias} but mlp_bias={mlp_bias}; '
                     'hyperinit has one use_bias for every linear layer')
  embed, heads = get(d, 'hidden_size', default=4096), get(d, 'num_attention_heads', default=32)
  kv, head_dim = kv_and_head_dim(d, embed, heads, 'num_key_value_heads')
  theta, _ = rope(d, 'llama')  # Llama rotates whole heads; it ignores partial_rotary_factor
  return transformer(
      'llama', vocab_size=get(d, 'vocab_size', default=32000),
      max_len=get(d, 'max_position_embeddings', default=2048),
      num_layers=get(d, 'num_hidden_layers', default=32), embed_dim=embed, num_heads=heads,
      num_kv_heads=kv, head_dim=head_dim, mlp_dim=get(d, 'intermediate_size', default=11008),
      activation=act(d, 'hidden_act', 'silu', 'llama'),
      norm_eps=float(get(d, 'rms_norm_eps', default=1e-6)), use_bias=attn_bias, rope_theta=theta,
      tie_embeddings=bool(d.get('tie_word_embeddings', False)),
      init_std=float(get(d, 'initializer_range', default=0.02)))


def _llama_to_hf(cfg):
  return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.d_head,
              hidden_act=ACT_TO_HF[cfg.activation], max_position_embeddings=cfg.max_len,
              rms_norm_eps=cfg.norm_eps, rope_parameters=rope_params(cfg),
              rope_theta=float(cfg.rope_theta), attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias,
              initializer_range=cfg.init_std, attention_dropout=0.0, pretraining_tp=1)


def _olmo_from_hf(d):
  require(d, 'olmo', clip_qkv=None, attention_bias=False)
  embed, heads = get(d, 'hidden_size', default=4096), get(d, 'num_attention_heads', default=32)
  kv, head_dim = kv_and_head_dim(d, embed, heads, 'num_key_value_heads')
  theta, _ = rope(d, 'olmo')
  return transformer(
      'olmo', vocab_size=get(d, 'vocab_size', default=50304),
      max_len=get(d, 'max_position_embeddings', default=2048),
      num_layers=get(d, 'num_hidden_layers', default=32), embed_dim=embed, num_heads=heads,
      num_kv_heads=kv, head_dim=head_dim, mlp_dim=get(d, 'intermediate_size', default=11008),
      activation=act(d, 'hidden_act', 'silu', 'olmo'), norm_eps=1e-5, rope_theta=theta,
      tie_embeddings=bool(d.get('tie_word_embeddings', False)),
      init_std=float(get(d, 'initializer_range', default=0.02)))


def _olmo_to_hf(cfg):
  return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              num_key_value_heads=cfg.n_kv_heads, hidden_act=ACT_TO_HF[cfg.activation],
              max_position_embeddings=cfg.max_len, rope_parameters=rope_params(cfg),
              rope_theta=float(cfg.rope_theta), attention_bias=False, clip_qkv=None,
              initializer_range=cfg.init_std, attention_dropout=0.0)


_LL = 'model.layers.{i}'
_LLAMA_TOP = rows(('model.embed_tokens.weight', 'token_embed/embedding', PLAIN),
                  ('model.norm.weight', 'final_norm/scale', PLAIN),
                  ('lm_head.weight', 'lm_head/kernel', LINEAR))
_LLAMA_LAYER = rows(
    (f'{_LL}.input_layernorm.weight', 'attn_norm/scale', PLAIN),
    (f'{_LL}.post_attention_layernorm.weight', 'mlp_norm/scale', PLAIN),
    *dense(f'{_LL}.self_attn.q_proj', 'attn/query'), *dense(f'{_LL}.self_attn.k_proj', 'attn/key'),
    *dense(f'{_LL}.self_attn.v_proj', 'attn/value'), *dense(f'{_LL}.self_attn.o_proj', 'attn/out'),
    ((f'{_LL}.mlp.gate_proj.weight', f'{_LL}.mlp.up_proj.weight'), 'mlp/wi/kernel', Unfuse()),
    ((f'{_LL}.mlp.gate_proj.bias', f'{_LL}.mlp.up_proj.bias'), 'mlp/wi/bias', Unfuse()),
    *dense(f'{_LL}.mlp.down_proj', 'mlp/wo'))
_LLAMA_RENAMES = ((r'^(?!model\.|lm_head\.)', 'model.'),)  # LlamaModel (base) checkpoints
_ROPE_FIXED = dict(gated_mlp=(True,), position=('rope',), rotary_pct=(1.0,),
                   parallel_residual=(False,))

LLAMA = Family('llama', 'LlamaForCausalLM', _LLAMA_TOP, _LLAMA_LAYER, _llama_from_hf, _llama_to_hf,
               fixed=dict(norm=('rmsnorm',), **_ROPE_FIXED), renames=_LLAMA_RENAMES,
               ignore=(r'\.rotary_emb\.inv_freq$',), tied_head='lm_head.weight')
OLMO = Family('olmo', 'OlmoForCausalLM', _LLAMA_TOP, _LLAMA_LAYER, _olmo_from_hf, _olmo_to_hf,
              fixed=dict(norm=('layernorm_nonparam',), norm_eps=(1e-5,), use_bias=(False,),
                         head_dim=STANDARD_HEAD_DIM, **_ROPE_FIXED),
              renames=_LLAMA_RENAMES, ignore=(r'\.rotary_emb\.inv_freq$',),
              tied_head='lm_head.weight')


FAMILIES: dict[str, Family] = {f.model_type: f for f in (GPT2, OPT, GPT_NEOX, LLAMA, OLMO, VIT)}


def family_for(cfg: ModelConfig, family: str | None = None) -> Family:
  """The HF family a config exports as (its `family` field, or 'vit')."""
  name = family or ('vit' if isinstance(cfg, ViTConfig) else cfg.family)
  if name not in FAMILIES:
    raise ValueError(f'unknown Hugging Face family {name!r}; supported: {sorted(FAMILIES)}')
  if (name == 'vit') != isinstance(cfg, ViTConfig):
    raise ValueError(f'family {name!r} does not fit a {type(cfg).__name__}')
  return FAMILIES[name]
