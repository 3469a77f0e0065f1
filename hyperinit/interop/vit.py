"""ViTForImageClassification <-> hyperinit ViT: config translation and name table."""

from __future__ import annotations

from hyperinit.interop.base import (ACT_TO_HF, MHA, PLAIN, STANDARD_HEAD_DIM, Family, act, dense,
                                    get, norm_pair, require)
from hyperinit.interop.convert import Permute, Plain, rows
from hyperinit.models.config import ViTConfig


def _square(d, key, default):
  v = get(d, key, default=default)
  if isinstance(v, (list, tuple)):
    if len(v) != 2 or v[0] != v[1]:
      raise ValueError(f'vit config.json has {key}={v!r}; hyperinit ViTs are square')
    v = v[0]
  return int(v)


def _vit_from_hf(d):
  require(d, 'vit', qkv_bias=True)
  labels = d.get('id2label')
  return ViTConfig(
      image_size=_square(d, 'image_size', 224), patch_size=_square(d, 'patch_size', 16),
      num_channels=get(d, 'num_channels', default=3),
      num_classes=len(labels) if labels else get(d, 'num_labels', default=2),
      embed_dim=get(d, 'hidden_size', default=768),
      num_layers=get(d, 'num_hidden_layers', default=12),
      num_heads=get(d, 'num_attention_heads', default=12),
      mlp_dim=get(d, 'intermediate_size', default=3072),
      activation=act(d, 'hidden_act', 'gelu', 'vit'),
      norm_eps=float(get(d, 'layer_norm_eps', default=1e-12)),
      init_std=float(get(d, 'initializer_range', default=0.02)))


def _vit_to_hf(cfg):
  labels = {str(i): f'LABEL_{i}' for i in range(cfg.num_classes)}
  return dict(hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim,
              hidden_act=ACT_TO_HF[cfg.activation], layer_norm_eps=cfg.norm_eps,
              image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
              qkv_bias=True, id2label=labels, label2id={v: int(k) for k, v in labels.items()},
              initializer_range=cfg.init_std, hidden_dropout_prob=cfg.dropout_rate,
              attention_probs_dropout_prob=0.0)


_VL = 'vit.encoder.layer.{i}'
VIT = Family(
    'vit', 'ViTForImageClassification',
    top=rows(('vit.embeddings.cls_token', 'cls_token', Plain(lead=2)),
             ('vit.embeddings.position_embeddings', 'pos_embed/embedding', Plain(lead=1)),
             ('vit.embeddings.patch_embeddings.projection.weight', 'patch_embed/kernel',
              Permute((3, 2, 0, 1))),  # torch conv (E, C, p, p) <- ours (p, p, C, E)
             ('vit.embeddings.patch_embeddings.projection.bias', 'patch_embed/bias', PLAIN),
             *norm_pair('vit.layernorm', 'final_norm'), *dense('classifier', 'head')),
    layer=rows(*norm_pair(f'{_VL}.layernorm_before', 'attn_norm'),
               *dense(f'{_VL}.attention.attention.query', 'attn/query'),
               *dense(f'{_VL}.attention.attention.key', 'attn/key'),
               *dense(f'{_VL}.attention.attention.value', 'attn/value'),
               *dense(f'{_VL}.attention.output.dense', 'attn/out'),
               *norm_pair(f'{_VL}.layernorm_after', 'mlp_norm'),
               *dense(f'{_VL}.intermediate.dense', 'mlp/wi'),
               *dense(f'{_VL}.output.dense', 'mlp/wo')),
    from_hf=_vit_from_hf, to_hf=_vit_to_hf,
    fixed=dict(norm=('layernorm',), gated_mlp=(False,), use_bias=(True,),
               parallel_residual=(False,), pool=('cls',), head_dim=STANDARD_HEAD_DIM,
               num_kv_heads=MHA),
    # transformers 5 in-memory names (what a state_dict holds) -> the on-disk names.
    renames=((r'^vit\.layers\.', 'vit.encoder.layer.'),
             (r'\.attention\.q_proj\.', '.attention.attention.query.'),
             (r'\.attention\.k_proj\.', '.attention.attention.key.'),
             (r'\.attention\.v_proj\.', '.attention.attention.value.'),
             (r'\.attention\.o_proj\.', '.attention.output.dense.'),
             (r'\.mlp\.fc1\.', '.intermediate.dense.'), (r'\.mlp\.fc2\.', '.output.dense.')),
    ignore=(r'^vit\.pooler\.',))  # ViTModel's pooler: unused by the classifier
