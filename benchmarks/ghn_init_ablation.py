"""Which parts of a GHN prediction help fine-tuning: predicted and random leaves mixed by group.

    PYTHONPATH=. python benchmarks/ghn_init_ablation.py --ghn_dir=WORKDIR/gpt/logah_s0/ghn \
        [--task=gpt] [--target=L5-D96-H4] [--steps=100] [--seeds=0] [--starts=random,predicted,io]

Loads a trained GHN, predicts `--target` (by default a validation architecture:
deeper than the CPU pool, narrower than the held-out targets, so that choices
made from this table are not made on the targets the experiment reports), and
fine-tunes it with the experiment's trainer config (configs/ghn.py:<task>_local,
lr 1e-3) from each start below, on the same batches per seed.  Prints the eval
loss (and accuracy for ViTs) at steps 0, 25, 100 and --steps, and, before training,
the residual stream after the last block on one eval batch: its rms and the
share of its energy that is the same vector for every token
(|mean over tokens|^2 / mean |x|^2; random init: ~0.05-0.1).

Starts (random = the model's own init with the run's seed):
  random            random init
  predicted         the full prediction
  io                predicted outside the blocks, random blocks (logah.scope 'io')
  blocks_only       predicted blocks, random outside them
  vectors_random    predicted matrices, gains / biases at their init (1 / 0)
  attention_random  predicted, but the attention kernels and biases random
  mlp_random        predicted, but the MLP kernels and biases random
  blocks_unit_gain  predicted, block kernels rescaled per layer to their init std
  blocks_rotated    predicted, each block kernel given random singular vectors
                    (same singular values)
  noise_1           predicted + Gaussian noise of 1x each weight leaf's init std
"""

from __future__ import annotations

import math

from absl import app, flags
import jax
import numpy as np

from benchmarks import _ghn_probe
from hyperinit import models, spec as spec_lib
from hyperinit.interop import convert
from hyperinit.logah import saving, scope, tasks
from hyperinit.logah.graph import is_scanned, slice_spec
from hyperinit.logah.noise import add_noise
from hyperinit.studies import ghn_finetune

_GHN_DIR = flags.DEFINE_string('ghn_dir', None, 'a saved GHN (train_ghn\'s <workdir>/ghn)',
                               required=True)
_TASK = flags.DEFINE_enum('task', 'gpt', ['gpt', 'vit'], 'which CPU config (data, trainer)')
_TARGET = flags.DEFINE_string('target', None, "target 'L<depth>-D<width>-H<heads>[-P<patch>]' "
                              '(default: L5-D96-H4, with -P2 for ViTs)')
_STEPS = flags.DEFINE_integer('steps', 100, 'fine-tuning steps')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'seeds (random init, data order, noise)')
_LR = flags.DEFINE_float('lr', 1e-3, 'peak fine-tuning learning rate')
_STARTS = flags.DEFINE_list('starts', None, 'the starts to run (default: all of the module doc)')


def _matrix(x: np.ndarray, fan_in: tuple[int, ...]) -> tuple[np.ndarray, tuple]:
  """A kernel -> [prod(fan-in dims), rest] (fan-in dims moved first) and how to undo it."""
  rest = tuple(i for i in range(x.ndim) if i not in fan_in)
  t = np.transpose(x, fan_in + rest)
  return t.reshape(math.prod(x.shape[i] for i in fan_in), -1), (t.shape, np.argsort(fan_in + rest))


def _unmatrix(m: np.ndarray, how: tuple) -> np.ndarray:
  shape, inv = how
  return np.transpose(m.reshape(shape), inv)


def _per_block_kernel(pred, rand, specs, fn):
  """fn(pred matrix, random matrix) on every layer of every block kernel; the rest predicted."""
  out = dict(pred)
  for p, s in specs.items():
    if not (scope.in_blocks(p, s) and s.fan_in):
      continue
    scanned = is_scanned(s)
    xs = pred[p] if scanned else pred[p][None]
    rs = rand[p] if scanned else rand[p][None]
    fan_in = slice_spec(s).fan_in if scanned else s.fan_in
    layers = []
    for x, r in zip(xs, rs):
      mx, how = _matrix(x, fan_in)
      layers.append(_unmatrix(fn(mx, _matrix(r, fan_in)[0]), how))
    out[p] = np.stack(layers) if scanned else layers[0]
  return out


def starts(target, pred: dict, rand: dict, seed: int) -> dict[str, dict]:
  """{name: flat params} of every start in the module doc."""
  specs = spec_lib.flatten(models.param_specs(target), is_leaf=spec_lib.is_spec)
  rng = np.random.default_rng(seed)
  pick = lambda use_pred: {p: pred[p] if use_pred(p) else rand[p] for p in specs}
  block = lambda p: scope.in_blocks(p, specs[p])

  def rotate(w, _):
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    qa = np.linalg.qr(rng.standard_normal(u.shape))[0]
    qb = np.linalg.qr(rng.standard_normal(vt.T.shape))[0]
    return (qa * s) @ qb.T

  noisy = spec_lib.flatten(add_noise(spec_lib.unflatten(pred), target, 1.0,
                                     jax.random.fold_in(jax.random.key(seed), 1)))
  return {
      'random': rand,
      'predicted': pred,
      'io': pick(lambda p: not block(p)),
      'blocks_only': pick(block),
      'vectors_random': pick(lambda p: bool(specs[p].fan_in) or specs[p].role == 'cls_token'),
      'attention_random': pick(lambda p: not (block(p) and '/attn/' in f'/{p}/')),
      'mlp_random': pick(lambda p: not (block(p) and '/mlp/' in f'/{p}/')),
      'blocks_unit_gain': _per_block_kernel(pred, rand, specs,
                                            lambda w, r: w * (r.std() / (w.std() + 1e-12))),
      'blocks_rotated': _per_block_kernel(pred, rand, specs, rotate),
      'noise_1': {p: np.asarray(v) for p, v in noisy.items()},
  }


def residual_stats(target, params: dict, batch: dict) -> tuple[float, float]:
  """(token-independent energy share, rms) of the residual stream after the last block."""
  flat = target.replace(scan_layers=False)
  tree = spec_lib.unflatten(params)
  if target.scan_layers:
    tree = convert.unstack_layers(tree, target.num_layers)
  x_in = batch['image'] if 'image' in batch else batch['tokens'][:, :-1]
  _, state = models.build(flat).apply({'params': tree}, x_in, capture_intermediates=True,
                                      mutable=['intermediates'])
  out = state['intermediates'][f'block_{target.num_layers - 1}']['__call__'][0]
  x = np.asarray(out[0] if isinstance(out, tuple) else out, np.float64)
  x = x.reshape(-1, x.shape[-1])
  energy = float(np.mean(np.sum(x ** 2, axis=-1)))
  return float(np.sum(x.mean(0) ** 2)) / energy, float(np.sqrt(energy / x.shape[-1]))


def main(argv):
  del argv
  name = _TARGET.value or ('L5-D96-H4-P2' if _TASK.value == 'vit' else 'L5-D96-H4')
  cfg = _ghn_probe.finetune_config(_TASK.value, _STEPS.value, name)
  f = cfg.finetune
  target = tasks.targets(cfg)[name]
  gcfg, gparams = saving.load_ghn(_GHN_DIR.value)
  pred = {p: np.asarray(v) for p, v in spec_lib.flatten(
      ghn_finetune.predict_inits(target, {'ghn': (gcfg, gparams)})['ghn']).items()}
  ft = ghn_finetune.Finetuner(f, target, lr=_LR.value)
  probe = tasks.meta_batch(next(iter(tasks.eval_batches(cfg))))
  print(f'GHN {_GHN_DIR.value} ({gcfg.decoder}) -> {name}, {_STEPS.value} steps at lr {_LR.value:g}')
  for seed in (int(s) for s in _SEEDS.value):
    rand = {p: np.asarray(v) for p, v in spec_lib.flatten(
        models.init_params(target, jax.random.key(seed))).items()}
    every = starts(target, pred, rand, seed)
    unknown = sorted(set(_STARTS.value or ()) - set(every))
    if unknown:
      raise ValueError(f'--starts names {unknown}; expected some of {sorted(every)}')
    for arm in _STARTS.value or every:
      params = every[arm]
      share, rms = residual_stats(target, params, probe)
      rows = ft.run(spec_lib.unflatten(params), seed)
      curve = _ghn_probe.format_curve(rows, accuracy=_TASK.value == 'vit')
      print(f'seed {seed}  {arm:<17} {curve}   | last block: shared {share:.2f}, rms {rms:.2f}',
            flush=True)


if __name__ == '__main__':
  app.run(main)
