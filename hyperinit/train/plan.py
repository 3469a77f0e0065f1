"""`--plan`: a few candidate layouts of a training config, compiled, best estimated MFU first.

    results = plan.search(config, 'v5e:8x8')        # <= 8 compiles
    results[0]['plan'], results[0]['roofline']['mfu']

Candidates vary the mesh (FSDP over every chip; FSDP x tensor; data x FSDP), the
remat policy, the per-device batch and grad_accum.  They are ordered by a rough
analytic memory estimate (`estimate_bytes`) so the ones likely to fit are compiled,
and the TPU compiler decides what fits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from hyperinit import models
from hyperinit.train import aot, roofline, tasks


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One layout: mesh sizes, remat, per-device batch (sequences) and grad_accum."""
  fsdp: int
  tensor: int
  data: int
  remat: str
  per_device_batch: int
  grad_accum: int = 1

  def apply(self, config: Any) -> Any:
    """A copy of `config` with this layout (global batch = per-device x data x fsdp x accum)."""
    cfg = aot.prepare(config)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = self.data, self.fsdp, self.tensor
    cfg.model.remat = self.remat
    cfg.batch_size = self.per_device_batch * self.data * self.fsdp * self.grad_accum
    cfg.grad_accum_steps = self.grad_accum
    return cfg


def estimate_bytes(model_cfg: Any, c: Candidate, seq_len: int, chips: int) -> float:
  """Rough per-device bytes of a train step (fp32 params + Adam + grads, bf16 activations).

  Only orders candidates; the compiler's memory analysis is the answer.
  """
  n = models.count_params(model_cfg)
  state = 16.0 * n / (c.fsdp * c.tensor)     # params, 2 moments, grads: fp32
  b, t, d = c.per_device_batch * c.tensor, seq_len, model_cfg.embed_dim
  h, f, v = model_cfg.num_heads, model_cfg.mlp_dim, model_cfg.vocab_size
  keep = {'full': 2 * d, 'dots': 2 * (4 * d + 2 * f), 'none': 2 * (8 * d + 3 * f)}[c.remat]
  layer = 2 * (8 * d + 3 * f) + 6 * h * t / c.tensor   # one block's working set (+ scores)
  acts = b * t * (model_cfg.num_layers * keep + layer) / c.tensor
  logits = b * t * v * 10 / c.tensor              # bf16 logits, fp32 softmax and its grad
  return state + acts + logits


def candidates(config: Any, chips: int, hbm_bytes: int, limit: int = 8) -> list[Candidate]:
  """<= `limit` layouts, likeliest to fit with the biggest batch first."""
  cfg = aot.prepare(config)
  model_cfg = tasks.resolve_model_config(cfg)
  seq = int(cfg.data.seq_len)
  meshes = [(chips, 1, 1)]
  if chips >= 8:
    meshes.append((chips // 4, 4, 1))
  if chips >= 32:
    meshes.append((16, 1, chips // 16))
  out = []
  for pdb in (16, 8, 4, 2, 1):
    for remat in ('dots', 'full'):
      for fsdp, tensor, data in meshes:
        c = Candidate(fsdp, tensor, data, remat, pdb)
        if estimate_bytes(model_cfg, c, seq, chips) <= 0.8 * hbm_bytes:
          out.append(c)
  if not out:   # nothing is estimated to fit: the smallest layouts, with accumulation
    out = [Candidate(f, t, d, 'full', 1, 1) for f, t, d in meshes]
  # biggest tokens per device first (best MFU), 'dots' before 'full' at equal batch
  out.sort(key=lambda c: (-c.per_device_batch, c.remat != 'dots', c.tensor, c.data))
  return out[:limit]


def search(config: Any, topology_name: str, *, limit: int = 8, first_fit: bool = False,
           log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Compiles the candidates; returns their reports, fitting ones by estimated MFU first.

  first_fit: stop at the first candidate that fits (the pod-table driver).
  """
  devices, kind = aot.topology(topology_name)
  results = []
  for c in candidates(config, len(devices), roofline.chip(kind).hbm_bytes, limit):
    log(f'candidate {c}')
    try:
      r = aot.compile_train(c.apply(config), topology_name, eval_step=False)
    except aot.DoesNotFit as e:
      r = dict(e.report, error=str(e))
    except ValueError as e:   # e.g. the batch does not divide this mesh
      r = dict(fits=False, error=str(e))
    r['candidate'] = dataclasses.asdict(c)
    results.append(r)
    log(f"  fits={r['fits']} per-device "
        f"{r.get('per_device_bytes', 0) / roofline.GiB:.2f} GiB, MFU estimate "
        f"{r.get('roofline', {}).get('mfu', 0):.2f}, {r.get('compile_s')} s")
    if first_fit and r['fits']:
      break
  return sorted(results, key=lambda r: (not r['fits'], -r.get('roofline', {}).get('mfu', 0)))

