"""Compile the trainer's jobs for a TPU slice from any host (libtpu, no TPU needed).

    devices, kind = aot.topology('v5e:4x4')            # abstract TPU devices
    report = aot.compile_train(config, 'v5e:4x4')      # the trainer's own step, compiled
    report['fits'], report['per_device_bytes'], report['roofline']

The train and eval steps come from `loop.setup` (the trainer's config ->
model, optimizer, mesh, rules and shardings path) and are lowered against
`step.abstract_state`, so nothing is allocated and the executable is the one
the trainer would run on that slice.  A plan the TPU compiler cannot fit
raises `DoesNotFit` (one line naming the biggest buffers and what to change).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from hyperinit import errors, sharding
from hyperinit import spec as spec_lib
from hyperinit.train import loop, roofline, step as step_lib, tasks

INSTALL = "pip install -e '.[tpu]'"
_TOPOLOGY = re.compile(r'^(v4|v5e|v5p|v6e):(\d+)x(\d+)(?:x(\d+))?$')


class MissingLibtpu(errors.UserInputError):
  """libtpu (the TPU compiler) is not installed."""


class DoesNotFit(errors.ResourceError):
  """The TPU compiler ran out of HBM for this plan; `.report` holds what is known."""

  def __init__(self, message: str, report: dict[str, Any]):
    super().__init__(message)
    self.report = report


def topology(name: str) -> tuple[list[Any], str]:
  """('v5e:2x2') -> (abstract TPU devices, chip generation 'v5e').

  Raises:
    MissingLibtpu: libtpu is not installed.
    ValueError: the name is not '<v4|v5e|v5p|v6e>:AxB[xC]' or libtpu rejects it.
  """
  m = _TOPOLOGY.match(name or '')
  if not m:
    raise ValueError(f'unknown topology {name!r}: expected <generation>:<chips per dim>, e.g. '
                     f'v5e:2x2, v5e:4x4, v5e:16x16, v5p:2x2x4, v6e:4x4 (generations '
                     f'{sorted(roofline.CHIPS)})')
  if importlib.util.find_spec('libtpu') is None:
    raise MissingLibtpu(f'compiling for TPU needs libtpu (the TPU compiler); install it with '
                        f'{INSTALL}')
  # Other processes (tests, notebooks) may have loaded libtpu: compiling needs no TPU.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies   # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(platform='tpu', topology_name=name)
  except Exception as e:  # libtpu's own message is long and multi-line
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f'libtpu rejected topology {name!r}: {first}') from None
  return list(desc.devices), m.group(1)


def prepare(config: Any) -> ml_collections.ConfigDict:
  """A copy of a trainer config for compiling: synthetic data (shapes only, no files).

  The vocabulary is the model preset's unless config.model.vocab_size is set.
  """
  cfg = ml_collections.ConfigDict(config.to_dict() if hasattr(config, 'to_dict') else config)
  if cfg.get('task', 'lm') == 'lm':
    cfg.data.dataset = 'synthetic'
  return cfg


def memory(compiled: Any) -> dict[str, int]:
  """Per-device bytes from `compiled.memory_analysis()`; total = args + temps + outputs - aliased."""
  m = compiled.memory_analysis()
  out = dict(arguments=int(m.argument_size_in_bytes), temps=int(m.temp_size_in_bytes),
             outputs=int(m.output_size_in_bytes), aliased=int(m.alias_size_in_bytes),
             code=int(m.generated_code_size_in_bytes))
  out['total'] = out['arguments'] + out['temps'] + out['outputs'] - out['aliased']
  return out


def argument_buffers(args: Any, top: int = 5) -> list[dict[str, Any]]:
  """The `top` biggest per-device argument shards of abstract `args` (sharded SDS trees)."""
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(args)[0]:
    if not hasattr(x, 'shape') or getattr(x, 'sharding', None) is None:
      continue
    shard = x.sharding.shard_shape(x.shape)
    n = int(math.prod(shard)) * jnp.dtype(x.dtype).itemsize
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'name', ''))) for k in path
                    if not isinstance(k, jax.tree_util.SequenceKey))
    out.append(dict(name=name, shape=f'{jnp.dtype(x.dtype).name}{list(x.shape)}',
                    shard=list(shard), bytes=n))
  return sorted(out, key=lambda b: -b['bytes'])[:top]


def advice(job: str) -> str:
  """What to change when `job` does not fit."""
  if job == 'train':
    return ('raise mesh.fsdp (shards params and optimizer state), set model.remat=full, '
            'lower the per-device batch or raise grad_accum_steps, or use a bigger slice')
  return 'raise mesh.fsdp / mesh.tensor or use a bigger slice'


def compile_fn(fn: Callable[..., Any], args: tuple, *, job: str, chip_kind: str,
               num_devices: int, context: Callable[[], Any],
               detail: str = '') -> tuple[Any, dict[str, Any]]:
  """Lowers and compiles `fn(*args)`; returns (compiled, memory / fit / HLO facts).

  `detail` (e.g. the per-device batch) goes into the does-not-fit line.

  Raises:
    DoesNotFit: the compiler ran out of HBM (message: one line, biggest buffers).
  """
  c = roofline.chip(chip_kind)
  t0 = time.time()
  with context():
    lowered = fn.lower(*args)
  try:
    compiled = lowered.compile()
  except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED
    text = str(e)
    if 'RESOURCE_EXHAUSTED' not in text and 'memory' not in text.lower():
      raise
    need = re.search(r'required for (HLO \w+) \(([0-9.]+[KMGT]?)\) exceeds available HBM '
                     r'\(([0-9.]+[KMGT]?)\)', text)
    bufs = argument_buffers(args)
    report = dict(job=job, fits=False, compile_s=round(time.time() - t0, 1),
                  hbm_bytes=c.hbm_bytes, largest_buffers=bufs,
                  argument_bytes=sum(b['bytes'] for b in argument_buffers(args, top=10**9)),
                  compiler_error=text.strip().splitlines()[0][:300])
    used = (f' ({need.group(1)} need {need.group(2)} of {need.group(3)} per chip)'
            if need else '')
    named = ', '.join(f"{b['name']} {b['shape']} ({b['bytes'] / roofline.GiB:.2f} GiB/device)"
                      for b in bufs[:3])
    raise DoesNotFit(f'{job} does not fit {chip_kind} HBM{used}{detail}; biggest per-device '
                     f'arguments: {named}; {advice(job)}', report) from None
  mem = memory(compiled)
  hlo = compiled.as_text()
  facts = dict(compile_s=round(time.time() - t0, 1), memory=mem, per_device_bytes=mem['total'],
               per_device_gib=round(mem['total'] / roofline.GiB, 3), hbm_bytes=c.hbm_bytes,
               headroom=roofline.HEADROOM,
               fits=mem['total'] <= (1 - roofline.HEADROOM) * c.hbm_bytes,
               largest_buffers=roofline.largest_buffers(hlo),
               collectives=roofline.collectives(hlo, num_devices))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  facts['xla_cost'] = {k: float(cost.get(k, 0.0)) for k in ('flops', 'bytes accessed')}
  return compiled, dict(facts, _hlo=hlo)


def _roofline(chip_kind: str, flops_per_device: float, facts: dict[str, Any]) -> dict[str, Any]:
  """The ESTIMATE: XLA's bytes accessed, scaled by how much its FLOPs undercount loops."""
  cost = facts['xla_cost']
  undercount = max(1.0, flops_per_device / cost['flops']) if cost['flops'] > 0 else 1.0
  ici = sum(v['ici_bytes'] for v in facts['collectives'].values())
  return roofline.estimate(roofline.chip(chip_kind), flops_per_device,
                           cost['bytes accessed'] * undercount, ici)


def train_setup(config: Any, devices: list[Any]) -> loop.Setup:
  """The trainer's `loop.setup` on the abstract devices (checks mesh and batch)."""
  if config.get('mup') is not None and config.mup.get('enabled'):
    raise ValueError('compile does not build muP runs yet: set config.mup.enabled=False (muP '
                     'changes multipliers and learning rates, not shapes or memory)')
  return loop.setup(config, devices=devices)


def compile_train(config: Any, topology_name: str, *, eval_step: bool = True) -> dict[str, Any]:
  """Compiles the trainer's train step (and eval step) for `topology_name`.

  Returns:
    the report: topology, chips, mesh, params, per_device_bytes (args + temps +
    outputs - aliased), memory, hbm_bytes, headroom, fits, largest_buffers,
    flops_per_step (closed form), collectives (by kind, bytes per device per
    step), roofline (ESTIMATE), compile_s, and the plan (batch, remat, ...).

  Raises:
    ValueError: bad topology, a mesh that does not divide the chips, a batch
      that does not divide the batch axes (one line each).
    MissingLibtpu, DoesNotFit.
  """
  devices, kind = topology(topology_name)
  cfg = prepare(config)
  s = train_setup(cfg, devices)
  model_cfg = s.task.model_cfg
  gb, k = int(cfg.batch_size), int(cfg.get('grad_accum_steps') or 1)
  seq = int(cfg.data.seq_len) if cfg.task == 'lm' else 1
  state = step_lib.abstract_state(s.tx, s.shapes, s.shardings)
  shapes = s.task.batch_shapes(gb)
  batch = {key: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s.batch_shardings[key])
           for key, v in shapes.items()}
  ctx = lambda: sharding.activation_context(s.mesh, s.rules)
  plan = dict(model=cfg.model.name, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype,
              remat=cfg.model.remat, scan_layers=bool(cfg.model.scan_layers), seq_len=seq,
              batch_size=gb, grad_accum_steps=k,
              per_device_batch=gb // sharding.batch_divisor(s.mesh, s.rules))
  head = dict(job='train', topology=topology_name, chip=kind, chips=len(devices),
              mesh=dict(s.mesh.shape), params=spec_lib.count(s.shapes), plan=plan)
  try:
    _, facts = compile_fn(s.train_step.jitted, (state, batch), job='train', chip_kind=kind,
                          num_devices=len(devices), context=ctx,
                          detail=f" with per-device batch {plan['per_device_batch']} x {seq} "
                                 f"tokens, remat={plan['remat']}, grad_accum={k}")
  except DoesNotFit as e:
    e.report.update(head)
    raise
  facts.pop('_hlo')
  report = dict(head, **facts)
  if cfg.task == 'lm':
    report['flops_per_step'] = tasks.flops_per_token(model_cfg, seq) * gb * seq
    report['tokens_per_step'] = gb * seq
  else:
    report['flops_per_step'] = None   # no closed form for ViT here
  if report['flops_per_step']:
    report['roofline'] = _roofline(kind, report['flops_per_step'] / len(devices), facts)
  if eval_step:
    # the trainer evaluates in batches of eval_batch_size (train.build.evaluate), not batch_size
    eb = int(cfg.get('eval_batch_size') or gb)
    eval_batch = {key: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s.batch_shardings[key])
                  for key, v in s.task.batch_shapes(eb).items()}
    _, ev = compile_fn(s.eval_step.jitted, (state.params, eval_batch), job='eval', chip_kind=kind,
                       num_devices=len(devices), context=ctx)
    report['eval'] = dict(per_device_bytes=ev['per_device_bytes'], fits=ev['fits'],
                          compile_s=ev['compile_s'])
  return report



def summary(report: dict[str, Any]) -> str:
  """A few human-readable lines of a report."""
  gib = lambda b: (f'{b / roofline.GiB:.2f} GiB' if b >= roofline.GiB / 10
                   else f'{b / 2**20:.1f} MiB')
  lines = [f"{report['job']} on {report['topology']} ({report['chips']} x {report['chip']}), "
           f"mesh {report['mesh']}, {report['params'] / 1e6:.1f}M params"]
  if 'plan' in report:
    lines.append('plan: ' + ', '.join(f'{k}={v}' for k, v in report['plan'].items()))
  if 'memory' in report:
    m = report['memory']
    lines.append(f"per device: {gib(report['per_device_bytes'])} (args {gib(m['arguments'])} + "
                 f"temps {gib(m['temps'])} + outputs {gib(m['outputs'])} - aliased "
                 f"{gib(m['aliased'])}) of {gib(report['hbm_bytes'])} HBM; fits "
                 f"(<= {1 - report['headroom']:.0%} of HBM): {report['fits']}")
  lines += [f"  buffer {b['shape']} ({b['op']}): {gib(b['bytes'])}" if isinstance(b, dict)
            else f'  buffer {b}' for b in report.get('largest_buffers', [])[:3]]
  if report.get('flops_per_step'):
    lines.append(f"flops/step (6N + 12LTD per token): {report['flops_per_step']:.3e}")
  for kind, c in report.get('collectives', {}).items():
    if c['count']:
      lines.append(f"  {kind}: {c['count']} ops, {c['executed']} runs/step, "
                   f"{gib(c['bytes'])}/device/step")
  r = report.get('roofline')
  if r:
    lines.append(f"roofline ESTIMATE: step {r['step_time_s'] * 1e3:.1f} ms ({r['bound']} bound: "
                 f"compute {r['compute_s'] * 1e3:.1f} / HBM {r['hbm_s'] * 1e3:.1f} / ICI "
                 f"{r['ici_s'] * 1e3:.1f} ms), MFU <= {r['mfu']:.0%}")
  if 'no_full_gather' in report:
    lines.append(f"clone: largest array {report['largest_hlo_array']['shape']}, largest "
                 f"destination shard {report['largest_dst_shard_elements']} elements; no full "
                 f"gather: {report['no_full_gather']}")
  lines.append(f"compile: {report.get('compile_s')} s")
  return '\n'.join(lines)
