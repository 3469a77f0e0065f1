"""Tasks: which model, which data, which loss.

A `Task` bundles the model config, the loss used for training, the sums
accumulated during evaluation, and the data loaders.  Two are built in:

  'lm'              causal language modelling, batches {'inputs', 'targets'}:
                    int32 [B, T]; eval: loss, perplexity.
  'classification'  image classification with a ViT, batches {'image':
                    float32 [B, H, W, C], 'label': int32 [B]}; eval: loss, accuracy.

Data comes from `hyperinit.data` (tfds + grain) or, with
`config.data.dataset = 'synthetic'`, from `hyperinit.train.synthetic`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperinit import data, models
from hyperinit import spec as spec_lib
from hyperinit.train import synthetic

TASKS = ('lm', 'classification')
# Model fields that only change how the model runs, not its parameters: these
# config.model overrides also apply to a model whose config comes from init_from.
RUNTIME_FIELDS = ('dtype', 'remat', 'attention_impl', 'dropout_rate')


def model_overrides(model_config: Any) -> dict[str, Any]:
  """The config.model fields other than 'name' that are set (not None)."""
  return {k: v for k, v in model_config.items() if k != 'name' and v is not None}


def dataset_info(config: Any) -> Any:
  """`hyperinit.data.dataset_info` of the configured dataset (None for synthetic)."""
  d = config.data
  if d.dataset == 'synthetic':
    return None
  return data.dataset_info(d.dataset, data_dir=d.get('data_dir'),
                                     tokenizer=d.get('tokenizer'))


def eval_split(config: Any) -> str:
  """config.data.eval_split, or the dataset's own ('validation' if it has one, else 'test')."""
  if config.data.get('eval_split'):
    return config.data.eval_split
  info = dataset_info(config)
  return info.eval_split if info is not None else 'validation'


def resolve_model_config(config: Any, base: models.ModelConfig | None = None) -> models.ModelConfig:
  """The model config of a run: `config.model` (preset + overrides) or `base`.

  With `base` (the config recorded by init_from), only RUNTIME_FIELDS are
  overridden.  Data-dependent fields left unset (vocab_size; image size,
  channels and classes) are filled from the dataset.
  """
  over = model_overrides(config.model)
  if base is not None:
    return base.replace(**{k: v for k, v in over.items() if k in RUNTIME_FIELDS})
  if not config.model.name:
    raise ValueError('config.model.name is empty: name a preset (see models.preset_names()) '
                     'or set config.init_from')
  info = dataset_info(config)
  if info is not None and config.task == 'lm':
    over.setdefault('vocab_size', int(info.vocab_size))
  elif info is not None and config.task == 'classification':
    shape = info.image_shape
    if shape[0] is not None:  # variable-size datasets (imagenet2012) need model.image_size
      over.setdefault('image_size', int(shape[0]))
    over.setdefault('num_channels', int(shape[-1]))
    over.setdefault('num_classes', int(info.num_classes))
  return models.get_config(config.model.name, **over)


@dataclasses.dataclass(frozen=True)
class Task:
  """What the trainer needs to know about a task.

  Attributes:
    name: 'lm' or 'classification'.
    model_cfg: the model's config.
    loss_fn: (params, batch, rng) -> (mean loss [], aux dict of means).
    eval_fn: (params, batch) -> dict of sums over the batch, with 'count'.
    summarize: sums -> {'loss', 'perplexity' | 'accuracy'}.
    units_per_example: tokens per example (LM) or 1 (images), for throughput.
    unit: 'tokens' or 'examples'.
    batch_shapes: fn(global_batch) -> {key: ShapeDtypeStruct} of a batch.
  """
  name: str
  model_cfg: models.ModelConfig
  loss_fn: Callable[..., Any]
  eval_fn: Callable[..., Any]
  summarize: Callable[[dict[str, float]], dict[str, float]]
  units_per_example: int
  unit: str
  batch_shapes: Callable[[int], dict[str, jax.ShapeDtypeStruct]]


def _apply(module, params, x, rng, train: bool, dropout: bool):
  if train and dropout:
    return module.apply({'params': params}, x, deterministic=False, rngs={'dropout': rng})
  return module.apply({'params': params}, x)


def lm_task(cfg: models.TransformerConfig, seq_len: int) -> Task:
  """Next-token prediction; batch {'inputs', 'targets'}: int32 [B, T]."""
  if cfg.position == 'learned' and seq_len > cfg.max_len:
    raise ValueError(f'data.seq_len={seq_len} exceeds the model max_len={cfg.max_len}')
  module = models.build(cfg)
  dropout = cfg.dropout_rate > 0

  def token_losses(params, batch, rng, train):
    logits = _apply(module, params, batch['inputs'], rng, train, dropout)  # [B, T, V] f32
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])

  def loss_fn(params, batch, rng):
    return jnp.mean(token_losses(params, batch, rng, True)), {}

  def eval_fn(params, batch):
    losses = token_losses(params, batch, None, False)
    return {'loss': jnp.sum(losses), 'count': jnp.asarray(losses.size, jnp.float32)}

  def summarize(s):
    loss = s['loss'] / max(s['count'], 1)
    return {'loss': loss, 'perplexity': math.exp(min(loss, 80.0))}

  shapes = lambda b: {k: jax.ShapeDtypeStruct((b, seq_len), jnp.int32) for k in ('inputs', 'targets')}
  return Task('lm', cfg, loss_fn, eval_fn, summarize, seq_len, 'tokens', shapes)


def classification_task(cfg: models.ViTConfig) -> Task:
  """Softmax classification; batch {'image': f32 [B, H, W, C], 'label': int32 [B]}."""
  module = models.build(cfg)
  dropout = cfg.dropout_rate > 0

  def loss_fn(params, batch, rng):
    logits = _apply(module, params, batch['image'], rng, True, dropout)  # [B, classes]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    acc = jnp.mean((jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32))
    return jnp.mean(loss), {'accuracy': acc}

  def eval_fn(params, batch):
    logits = module.apply({'params': params}, batch['image'])
    w = batch.get('mask', jnp.ones(logits.shape[:1], jnp.float32))  # 0: padding row
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
    return {'loss': jnp.sum(w * loss), 'correct': jnp.sum(w * correct), 'count': jnp.sum(w)}

  def summarize(s):
    n = max(s['count'], 1)
    return {'loss': s['loss'] / n, 'accuracy': s['correct'] / n}

  img = (cfg.image_size, cfg.image_size, cfg.num_channels)
  shapes = lambda b: {'image': jax.ShapeDtypeStruct((b,) + img, jnp.float32),
                      'label': jax.ShapeDtypeStruct((b,), jnp.int32)}
  return Task('classification', cfg, loss_fn, eval_fn, summarize, 1, 'examples', shapes)


def make_task(config: Any, model_cfg: models.ModelConfig) -> Task:
  if config.task == 'lm':
    if not isinstance(model_cfg, models.TransformerConfig):
      raise ValueError(f'task lm needs a TransformerConfig, got {type(model_cfg).__name__}')
    return lm_task(model_cfg, int(config.data.seq_len))
  if config.task == 'classification':
    if not isinstance(model_cfg, models.ViTConfig):
      raise ValueError(f'task classification needs a ViTConfig, got {type(model_cfg).__name__}')
    return classification_task(model_cfg)
  raise ValueError(f'config.task={config.task!r}; expected one of {TASKS}')


def make_loader(config: Any, task: Task, split: str, train: bool, seed: int,
                shard_index: int | None = None, shard_count: int | None = None):
  """A grain DataLoader for this process's slice of the global batches.

  Training loaders repeat forever; evaluation loaders make one pass.
  """
  d, cfg = config.data, task.model_cfg
  num_epochs = None if train else 1
  batch = int(config.batch_size if train else config.get('eval_batch_size') or config.batch_size)
  shard = dict(num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count,
               worker_count=int(d.get('worker_count') or 0))
  if d.dataset == 'synthetic':
    if task.name == 'lm':
      return synthetic.lm_loader(int(d.seq_len), batch, cfg.vocab_size, seed=seed, split=split,
                                 shuffle=train, **shard)
    shape = (cfg.image_size, cfg.image_size, cfg.num_channels)
    return synthetic.image_loader(shape, cfg.num_classes, batch, seed=seed, split=split,
                                  shuffle=train, **shard)
  if task.name == 'lm':
    return data.lm_loader(dataset=d.dataset, split=split, seq_len=int(d.seq_len), batch_size=batch,
                          seed=seed, data_dir=d.get('data_dir'), tokenizer=d.get('tokenizer'),
                          **shard)
  # Evaluation covers every example once: the last batch is padded and masked.
  return data.image_loader(dataset=d.dataset, split=split, batch_size=batch, seed=seed,
                           train=train, data_dir=d.get('data_dir'), image_size=cfg.image_size,
                           pad_final_batch=not train, **shard)


def count_matmul_params(cfg: models.ModelConfig) -> int:
  """Parameters that take part in a matmul per token (for FLOP counts).

  Lookup-only tables (positions, an untied input embedding) do not; a tied
  embedding does (it is the readout).  Read from the annotations' roles.
  """
  specs = spec_lib.flatten(models.param_specs(cfg), is_leaf=spec_lib.is_spec)
  shapes = spec_lib.flatten(models.param_shapes(cfg))
  return int(sum(np.prod(shapes[k].shape) for k, s in specs.items()
                 if s.role not in ('position', 'embedding')))


def flops_per_token(cfg: models.TransformerConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 N + 12 L T D_attn (PaLM appendix B; fwd + bwd)."""
  attn = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.d_head
  return 6.0 * count_matmul_params(cfg) + attn
