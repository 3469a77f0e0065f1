r"""Training throughput of our train step vs a minimal hand-written JAX step, same run.

  python -m benchmarks.train_throughput                       # gpt2-tiny on one CPU device
  python -m benchmarks.train_throughput --model=gpt2 --dtype=bfloat16 --batch=16 \
      --seq_len=1024 --remat=none                            # on a GPU: prints MFU too

Both steps train the same model on the same device batch with the same optax
optimizer (`make_optimizer`: clip + AdamW + warm-up/cosine), so the ratio
measures the trainer's machinery (sharded jit, rng folding, metrics, grad
norm, donation), not the optimizer.  Repetitions alternate between the two so
drift on a shared machine hits both; the median of each is reported.  "ours +
loop" adds the per-step host work of `train_and_evaluate` (numpy batch ->
global array, metric accumulation).

MFU = flops_per_token * tokens/s / (peak FLOP/s * devices), flops per token
= 6 N + 12 L T D (PaLM, appendix B); the peak comes from --peak_tflops or a
table of dense bf16 peaks by device kind.
"""

from __future__ import annotations

import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from configs import lm as lm_configs
from hyperinit import models
from hyperinit.train import loop, step as step_lib, tasks

_MODEL = flags.DEFINE_string('model', 'gpt2-tiny', 'Model preset.')
_OVER = flags.DEFINE_string('model_overrides', '', "Model fields, e.g. 'num_layers=4,embed_dim=256'.")
_BATCH = flags.DEFINE_integer('batch', 16, 'Global batch (sequences).')
_SEQ = flags.DEFINE_integer('seq_len', 128, 'Tokens per sequence.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_REMAT = flags.DEFINE_enum('remat', 'none', ['none', 'full', 'dots'], 'Block rematerialisation.')
_SCAN = flags.DEFINE_bool('scan_layers', False, 'nn.scan over blocks.')
_ATTN = flags.DEFINE_string('attention_impl', None, "e.g. 'cudnn' on GPUs.")
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps per timed repetition.')
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed repetitions of each step (alternating).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
_DEVICES = flags.DEFINE_integer('devices', 1, 'Devices (data parallel) for both steps.')
_PEAK = flags.DEFINE_float('peak_tflops', None, 'Peak dense TFLOP/s per device for MFU '
                           '(default: table by device kind; none on CPU).')
_JSON = flags.DEFINE_string('json_out', None, 'Also write the results here.')

# Dense bf16 peaks (TFLOP/s) by jax device_kind substring.
PEAKS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L4': 121.0, 'A10G': 125.0,
         'TPU v6': 918.0, 'TPU v5p': 459.0, 'TPU v5 lite': 197.0, 'TPU v5e': 197.0,
         'TPU v4': 275.0}


def peak_tflops(device) -> float | None:
  if _PEAK.value:
    return _PEAK.value
  for k, v in PEAKS.items():
    if k.lower() in device.device_kind.lower():
      return v
  return None


def config():
  c = lm_configs.get_config('tiny')
  c.model.name = _MODEL.value
  c.model.dtype, c.model.remat, c.model.scan_layers = _DTYPE.value, _REMAT.value, _SCAN.value
  c.model.attention_impl = _ATTN.value
  for item in filter(None, _OVER.value.split(',')):
    k, v = item.split('=')
    c.model[k] = type(models.get_config(_MODEL.value).to_dict()[k])(v)
  c.data.dataset, c.data.seq_len = 'synthetic', _SEQ.value
  c.batch_size = _BATCH.value
  c.num_train_steps = 1000
  c.optimizer.weight_decay = 0.1
  return c


def handwritten_step(cfg, tx):
  """The textbook step: value_and_grad of the mean cross-entropy, optax update."""
  module = models.build(cfg)

  def loss_fn(params, batch):
    logits = module.apply({'params': params}, batch['inputs'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets']).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def timed(fn, steps):
  """(wall seconds, process CPU seconds) for `steps` calls, synchronised at the end."""
  t, c = time.perf_counter(), time.process_time()
  out = None
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - t, time.process_time() - c


def main(argv):
  del argv
  devices = jax.devices()[:_DEVICES.value]
  c = config()
  s = loop.setup(c, devices=devices)
  cfg = s.task.model_cfg
  rng = np.random.default_rng(0)
  host = {k: rng.integers(0, cfg.vocab_size, (_BATCH.value, _SEQ.value)).astype(np.int32)
          for k in ('inputs', 'targets')}
  expected = s.task.batch_shapes(_BATCH.value)
  batch = loop.global_batch(host, s.batch_shardings, expected)

  # ours
  state = step_lib.init_state(lambda k: models.init_params(cfg, k), s.tx, jax.random.key(0),
                              s.shardings)
  box = {'state': state}

  def ours():
    box['state'], m = s.train_step(box['state'], batch)
    return m['loss']

  acc = {'window': None, 'health': None}

  def ours_loop():  # what train_and_evaluate does on the host around each step
    b = loop.global_batch(host, s.batch_shardings, expected)
    box['state'], m = s.train_step(box['state'], b)
    acc['window'] = m if acc['window'] is None else jax.tree.map(jnp.add, acc['window'], m)
    h = m['loss'] + m['grad_norm']
    acc['health'] = h if acc['health'] is None else acc['health'] + h
    return m['loss']

  # hand-written, same model / optimizer / batch / device(s)
  hw = handwritten_step(cfg, s.tx)
  params = jax.jit(lambda k: models.init_params(cfg, k),
                   out_shardings=s.shardings.params)(jax.random.key(1))
  hbox = {'p': params, 'o': jax.jit(s.tx.init)(params)}

  def baseline():
    hbox['p'], hbox['o'], loss = hw(hbox['p'], hbox['o'], batch)
    return loss

  fns = {'hand-written': baseline, 'ours': ours, 'ours + loop': ours_loop}
  for name, fn in fns.items():  # compile + warm up
    timed(fn, _WARMUP.value)
  times = {k: [] for k in fns}
  cpu = {k: [] for k in fns}
  for _ in range(_REPEATS.value):
    for name, fn in fns.items():
      wall, c = timed(fn, _STEPS.value)
      times[name].append(wall)
      cpu[name].append(c)

  tokens = _BATCH.value * _SEQ.value * _STEPS.value
  fpt = tasks.flops_per_token(cfg, _SEQ.value)
  peak = peak_tflops(devices[0])
  results = {'model': _MODEL.value, 'params': models.count_params(cfg), 'batch': _BATCH.value,
             'seq_len': _SEQ.value, 'dtype': _DTYPE.value, 'remat': _REMAT.value,
             'devices': len(devices), 'device_kind': devices[0].device_kind,
             'flops_per_token': fpt, 'peak_tflops': peak}
  print(f"{_MODEL.value} ({results['params']:,} params), batch {_BATCH.value} x {_SEQ.value}, "
        f"{_DTYPE.value}, {len(devices)} x {devices[0].device_kind}; median of "
        f"{_REPEATS.value} x {_STEPS.value} steps")
  base = tokens / statistics.median(times['hand-written'])
  base_cpu = statistics.median(cpu['hand-written'])
  for name, ts in times.items():
    tps = tokens / statistics.median(ts)
    spread = (max(ts) - min(ts)) / statistics.median(ts)
    cpu_ratio = base_cpu / statistics.median(cpu[name])
    line = f'  {name:13s} {tps:12,.0f} tokens/s  ({tps / base:.3f}x hand-written; ' \
           f'rep spread {spread:.0%}; by process CPU time {cpu_ratio:.3f}x)'
    results[name] = {'tokens_per_sec': tps, 'ratio': tps / base, 'spread': spread,
                     'cpu_time_ratio': cpu_ratio}
    if peak:
      mfu = fpt * tps / (peak * 1e12 * len(devices))
      line += f'  MFU {mfu:.1%}'
      results[name]['mfu'] = mfu
    print(line)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main)
