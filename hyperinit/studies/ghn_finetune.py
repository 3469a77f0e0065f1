"""Fine-tuning comparisons: one target, one optimizer, one data order, different inits.

    ft = Finetuner(config.finetune, target, lr=3e-4)    # the trainer's setup, built once per LR
    predicted = predict_inits(target, {'logah': (ghn_cfg, ghn_params)})   # {'logah': params}
    cloned = cloned_prediction(ghn_cfg, ghn_params, target, factor=2, seed=0)  # predict at 1/2, clone 2x
    start = start_params(target, seed, predicted.get(init), noise=0.1)    # random init if None
    curve = ft.run(start, seed=0)
    # [{'step': 0, 'loss': 2.31, 'accuracy': 0.11}, {'step': 25, ...}, ...]

`config.finetune` is a trainer config (configs/ghn.py builds it from
configs/common.py), so fine-tuning is the shared trainer's jitted, sharded
train and eval steps (`hyperinit.train.setup`): AdamW with warm-up + cosine
decay and weight decay on matrices, the trainer's data loaders, its eval sums.
Every init of a comparison gets the same batches (the train loader seeded by
`seed`) and the same eval batches, evaluated at step 0, at `eval_at`, every
`eval_every` steps and at the end.  The learning rate is the one knob that
differs between runs (GHN starts are fine-tuned at a multiple of random init's
LR, as GHN-3's recipe does), and predicted starts may get Gaussian noise of a
given fraction of each weight leaf's own init std (`add_noise`): GHN-3's tiled
predictions repeat channel blocks that deterministic training never separates.

`cloned_prediction` is the other way to start a target wider than every pool
member: predict it at 1/n of its width (where the GHN has seen widths), then
HyperClone that prediction n times (`cloning.clone_model`), which widens it
without changing its function (docs/logah.md, "Predict narrower, then HyperClone").
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from hyperinit import cloning, models, train
from hyperinit.logah import ghn as ghn_lib
from hyperinit.logah import scope as scope_lib
from hyperinit.logah.noise import add_noise
from hyperinit.models.config import ModelConfig
from hyperinit.train import tasks as train_tasks


def eval_steps(f: Any) -> tuple[int, ...]:
  """Steps after which a fine-tuning run is evaluated (always 0 and num_train_steps)."""
  n = int(f.num_train_steps)
  at = tuple(int(s) for s in f.eval_at)
  if n < 1 or any(s < 0 or s > n for s in at):
    raise ValueError(f'finetune.num_train_steps={n} must be >= 1 and every eval_at step in '
                     f'[0, {n}]; got eval_at={at}')
  steps = {0, n, *at}
  if int(f.get('eval_every') or 0) > 0:
    steps |= set(range(0, n + 1, int(f.eval_every)))
  return tuple(sorted(steps))


class Finetuner:
  """The trainer's steps for one target; `run(params, seed)` fine-tunes from `params`.

  Args:
    f: the fine-tuning trainer config (`config.finetune` of configs/ghn.py).
    target: the model config to fine-tune.
    devices: devices of the mesh (default: the first `f.num_devices`, 0 = all).
    lr: peak learning rate (default: f.optimizer.learning_rate).
  """

  def __init__(self, f: Any, target: ModelConfig, devices: Any = None, lr: float | None = None):
    if lr is not None:
      f = f.copy_and_resolve_references()
      f.optimizer.learning_rate = float(lr)
    self.f, self.target = f, target
    if devices is None:
      n = int(f.get('num_devices') or 0)
      devices = jax.devices()[:n] if n > 0 else None
    self.setup = train.setup(f, model_cfg=target, devices=devices)
    self._eval_batches = None

  def eval_batches(self) -> list[dict[str, np.ndarray]]:
    """The first `f.eval_batches` batches of the eval split (fixed, shared by all inits)."""
    if self._eval_batches is None:
      loader = train_tasks.make_loader(self.f, self.setup.task, train_tasks.eval_split(self.f),
                                       train=False, seed=0)
      out = []
      for batch in loader:
        if 0 < int(self.f.eval_batches) <= len(out):
          break
        out.append(batch)
      self._eval_batches = out
    return self._eval_batches

  def evaluate(self, params: Any) -> dict[str, float]:
    return train.evaluate(self.setup, self.f, params, self.eval_batches())

  def run(self, params: Any, seed: int) -> list[dict[str, float]]:
    """Fine-tunes from `params` (not modified); returns eval rows {'step', 'loss', ...}."""
    s, f = self.setup, self.f
    points = set(eval_steps(f))
    n, gb = int(f.num_train_steps), int(f.batch_size)
    expected = s.task.batch_shapes(gb)
    data_iter = iter(train_tasks.make_loader(f, s.task, f.data.train_split, train=True,
                                             seed=seed))
    state = train.state_from_params(params, s.tx, jax.random.key(seed), s.shardings)
    rows, t0, loss = [], time.perf_counter(), float('nan')
    for step in range(n + 1):
      if step in points:
        rows.append({'step': step, **self.evaluate(state.params)})
      if step == n:
        break
      state, m = s.train_step(state, train.global_batch(next(data_iter), s.batch_shardings,
                                                        expected))
      loss = m['loss']
    if not np.isfinite(float(loss)):
      logging.warning('fine-tuning loss is %s after %d steps', float(loss), n)
    logging.info('fine-tuned %s for %d steps in %.1fs; eval loss %s', type(self.target).__name__,
                 n, time.perf_counter() - t0,
                 ', '.join(f"{r['step']}: {r['loss']:.3f}" for r in rows))
    return rows


def predict_inits(target: ModelConfig,
                  ghns: dict[str, tuple[ghn_lib.GHNConfig, dict]]) -> dict[str, Any]:
  """{name: GHN-predicted params of `target`} (deterministic: one prediction per GHN)."""
  return {name: ghn_lib.predict(cfg, params, target) for name, (cfg, params) in ghns.items()}


def source_config(target: ModelConfig, n: int) -> ModelConfig:
  """`target` with its embed, MLP and head widths divided by n (same depth, head count, vocab)."""
  if n < 2:
    raise ValueError(f'clone factor must be an integer >= 2, got {n!r}')
  widths = {'embed': target.embed_dim, 'mlp': target.mlp_dim, 'head_dim': target.d_head}
  bad = {k: v for k, v in widths.items() if v % n}
  if bad:
    raise ValueError(f'clone factor {n} must divide the target\'s widths {widths}; it does not '
                     f'divide {bad}')
  return dataclasses.replace(target, embed_dim=target.embed_dim // n, mlp_dim=target.mlp_dim // n,
                             head_dim=None if target.head_dim is None else target.head_dim // n)


def cloned_prediction(ghn_cfg: ghn_lib.GHNConfig, ghn_params: Any, target: ModelConfig,
                      factor: int, seed: int, snr_db: float = 10.0) -> Any:
  """The GHN's prediction of `source_config(target, factor)`, HyperCloned `factor` times along
  embed / mlp / head_dim (noisy symmetric variant at `snr_db`, noise seeded by `seed`) to
  `target`'s params (same tree and shapes as `models.init_params(target, ...)`)."""
  src = source_config(target, factor)
  params, dst = cloning.clone_model(ghn_lib.predict(ghn_cfg, ghn_params, src), src,
                                    {'embed': factor, 'mlp': factor, 'head_dim': factor},
                                    rng=jax.random.key(seed), snr_db=snr_db)
  if dataclasses.replace(dst, head_dim=target.head_dim) != target or (
      dst.d_head != target.d_head):
    raise ValueError(f'cloning {src} {factor}x gave {dst}, not the target {target}')
  return params


def start_params(target: ModelConfig, seed: int, predicted: Any = None,
                 noise: float = 0.0, scope: str = 'all') -> Any:
  """The params a fine-tuning run starts from: the model's own random init (seeded) when
  `predicted` is None, else `predicted` + `add_noise(frac=noise)` (noise seeded by `seed`).

  scope 'io' (`logah.scope`) keeps only the (noised) predicted leaves outside the blocks and
  takes the blocks from the random init of the same seed: exactly the random arm's blocks.
  """
  if predicted is None:
    return models.init_params(target, jax.random.key(seed))
  start = add_noise(predicted, target, noise, jax.random.fold_in(jax.random.key(seed), 1))
  if scope == 'all':
    return start
  return scope_lib.restrict(start, models.init_params(target, jax.random.key(seed)), target,
                            scope)
