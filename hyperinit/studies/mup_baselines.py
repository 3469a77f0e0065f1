"""Count-based n-gram losses: the bar a sweep's language models must beat to show width matters.

A byte-level model whose validation loss is above a bigram's has not learned
more than pair statistics yet; comparing widths there measures early training,
not capacity.  Both baselines are fitted by counting (add-alpha smoothing) and
evaluated on the same validation tokens as the models:

    b = ngram_losses(train_inputs, train_targets, val_inputs, val_targets, vocab=256)
    # {'unigram': nats/token, 'bigram': nats/token, 'alpha': smoothing used}

alpha is the best of a small grid *on the validation tokens*, so the baseline
is, if anything, optimistic (a model that beats it beats every add-alpha bigram).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hyperinit import data

ALPHAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def ngram_losses(train_inputs: np.ndarray, train_targets: np.ndarray, val_inputs: np.ndarray,
                 val_targets: np.ndarray, vocab: int = 256,
                 alphas: Sequence[float] = ALPHAS) -> dict[str, float]:
  """Unigram and bigram cross-entropy (nats/token) on the validation tokens.

  Args:
    train_inputs, train_targets: int arrays of any shape (same shape): the
      bigram counts pairs (input token -> target token), the unigram targets.
    val_inputs, val_targets: the evaluation pairs, any shape.
    vocab: token ids lie in [0, vocab).
    alphas: add-alpha smoothing values tried; the best per model is used.
  """
  x, y = np.ravel(train_inputs).astype(np.int64), np.ravel(train_targets).astype(np.int64)
  vx, vy = np.ravel(val_inputs).astype(np.int64), np.ravel(val_targets).astype(np.int64)
  if x.shape != y.shape or vx.shape != vy.shape or not x.size or not vx.size:
    raise ValueError(f'need equal, non-empty input/target arrays, got train {x.shape} vs '
                     f'{y.shape}, validation {vx.shape} vs {vy.shape}')
  pairs = np.bincount(x * vocab + y, minlength=vocab * vocab).reshape(vocab, vocab)
  uni = np.bincount(y, minlength=vocab).astype(np.float64)
  best: dict[str, tuple[float, float]] = {}
  for a in alphas:
    pu = (uni + a) / (uni + a).sum()
    pb = (pairs + a) / (pairs + a).sum(axis=1, keepdims=True)
    for name, loss in (('unigram', -np.mean(np.log(pu[vy]))),
                       ('bigram', -np.mean(np.log(pb[vx, vy])))):
      if name not in best or loss < best[name][0]:
        best[name] = (float(loss), float(a))
  return {'unigram': best['unigram'][0], 'bigram': best['bigram'][0],
          'unigram_alpha': best['unigram'][1], 'bigram_alpha': best['bigram'][1]}


def split_tokens(config: Any) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of one unshuffled pass over the training split, [R, T]."""
  d = config.data
  rows = [(b['inputs'][0], b['targets'][0]) for b in
          data.lm_loader(d.dataset, 'train', seq_len=int(d.seq_len), batch_size=1, seed=0,
                         num_epochs=1, shuffle=False, data_dir=d.get('data_dir'))]
  return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def sweep_baselines(config: Any, seen: tuple[np.ndarray, np.ndarray],
                    val: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
  """n-gram losses on the validation rows, fitted (a) on the training batches one run sees
  (`seen`: seed 0's [steps, B, T] inputs and targets) and (b) on the whole training split."""
  split = split_tokens(config)
  a, b = ngram_losses(*seen, *val), ngram_losses(*split, *val)
  return {'bigram_seen': a['bigram'], 'unigram_seen': a['unigram'],
          'bigram_split': b['bigram'], 'unigram_split': b['unigram'],
          'bigram_alpha_seen': a['bigram_alpha'], 'bigram_alpha_split': b['bigram_alpha'],
          'seen_tokens': int(np.size(seen[1])), 'split_tokens': int(np.size(split[1])),
          'val_tokens': int(np.size(val[1]))}
