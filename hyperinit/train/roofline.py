"""TPU chip table, closed-form FLOPs, HLO collectives and a roofline ESTIMATE.

    chip = roofline.chip('v5e')
    flops = tasks.flops_per_token(model_cfg, seq_len) * tokens   # closed form
    coll = roofline.collectives(compiled.as_text(), num_devices)
    est = roofline.estimate(chip, flops / chips, hbm_bytes_per_device, coll)

Nothing here measures anything: the step time and MFU are what the peak
numbers allow, assuming compute, HBM traffic and collectives overlap
perfectly (the slowest of the three bounds the step).  Real MFU is lower.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip peak numbers.

  Attributes:
    hbm_bytes: HBM capacity.
    peak_flops: dense bf16 FLOP/s.
    hbm_bandwidth: HBM bytes/s.
    ici_bandwidth: bytes/s one chip sends on ICI in a ring collective over one
      mesh axis (one link each way, i.e. 2 x the one-way per-link number).
  """
  hbm_bytes: int
  peak_flops: float
  hbm_bandwidth: float
  ici_bandwidth: float


# Sources: Google Cloud TPU system-architecture pages (v4, v5e, v5p, v6e: HBM size, bf16
# peak, HBM bandwidth) and "How to Scale Your Model" (Austin et al. 2025, jax-ml scaling
# book, "How to think about TPUs": the same peaks and the one-way ICI bandwidth per link:
# v4 / v5e 4.5e10 B/s, v5p / v6e 9e10 B/s; we count both directions of one link).
CHIPS: dict[str, Chip] = {
    'v4': Chip(32 * GiB, 2.75e14, 1.23e12, 9.0e10),
    'v5e': Chip(16 * GiB, 1.97e14, 8.1e11, 9.0e10),
    'v5p': Chip(95 * GiB, 4.59e14, 2.76e12, 1.8e11),
    'v6e': Chip(32 * GiB, 9.18e14, 1.64e12, 1.8e11),
}

# The share of HBM a plan may use: the rest is left for the runtime, fragmentation and
# the compiler's estimate error.
HEADROOM = 0.10


def chip(kind: str) -> Chip:
  if kind not in CHIPS:
    raise ValueError(f'unknown TPU generation {kind!r}; expected one of {sorted(CHIPS)}')
  return CHIPS[kind]


# --- collectives in compiled HLO text --------------------------------------------------

KINDS = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1, 'bf16': 2, 'f16': 2,
                's16': 2, 'u16': 2, 'f32': 4, 's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8,
                'c64': 8, 'c128': 16}
_ARRAY = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([0-9,]*)\]')
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.*?)\s+(' + '|'.join(KINDS) +
                    r')(-start)?\(')
_COMP = re.compile(r'^(?:ENTRY\s+)?%(\S+)\s.*\{\s*$')
_CALLS = re.compile(r'\b(?:calls|to_apply|body|condition|branch_computations|'
                    r'async_computation)=\{?([^,}]+(?:,\s*%[^,}]+)*)\}?')
_WHILE = re.compile(r'\bwhile\(.*condition=%([^,\s]+),\s*body=%([^,\s]+)')
_CONST = re.compile(r'[su]32\[\](?:\{[^}]*\})?\s+constant\((\d+)\)')


def array_bytes(text: str) -> list[tuple[int, int]]:
  """[(elements, bytes)] of every array shape written in `text` (e.g. 'bf16[4,8]')."""
  out = []
  for dtype, dims in _ARRAY.findall(text):
    n = math.prod(int(d) for d in dims.split(',') if d) if dims else 1
    out.append((n, n * _DTYPE_BYTES[dtype]))
  return out


def _group_size(line: str, num_devices: int) -> int:
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", m.group(2)) if a in sizes)
  m = re.search(r'replica_groups=\[(\d+),(\d+)\]<=', line)
  if m:
    return int(m.group(2))
  m = re.search(r'replica_groups=\{\{([0-9,]*)\}', line)
  if m:
    return len(m.group(1).split(','))
  return num_devices


def parse_computations(hlo: str) -> dict[str, list[str]]:
  """HLO module text -> {computation name: its instruction lines}; 'ENTRY' names the entry."""
  comps, name = {}, None
  for line in hlo.splitlines():
    m = _COMP.match(line)
    if m and not line.startswith(' '):
      name = 'ENTRY' if line.startswith('ENTRY') else m.group(1)
      comps[name] = []
    elif line.startswith('}'):
      name = None
    elif name is not None:
      comps[name].append(line)
  return comps


def _trip_count(cond: list[str]) -> int:
  """A while loop's trip count: the one s32 constant its condition compares with (else 1)."""
  consts = {int(c) for line in cond for c in _CONST.findall(line)}
  return max(consts) if len(consts) == 1 else 1


def executions(comps: dict[str, list[str]]) -> dict[str, int]:
  """How many times each computation runs per call of the entry (while bodies x trips)."""
  counts: dict[str, int] = collections.defaultdict(int)

  def visit(name: str, times: int, depth: int = 0):
    if name not in comps or depth > 64:
      return
    counts[name] += times
    for line in comps[name]:
      w = _WHILE.search(line)
      if w:
        trips = _trip_count(comps.get(w.group(1), []))
        visit(w.group(2), times * trips, depth + 1)
        visit(w.group(1), times * (trips + 1), depth + 1)
        continue
      for group in _CALLS.findall(line):
        for callee in re.findall(r'%?([\w.\-]+)', group):
          visit(callee, times, depth + 1)

  visit('ENTRY', 1)
  return dict(counts)


def collectives(hlo: str, num_devices: int) -> dict[str, dict[str, float]]:
  """Collectives of a compiled (SPMD-partitioned, per-device) HLO module, by kind.

  Returns:
    {kind: {'count': static instructions, 'executed': runs per step (while
    bodies x trip count), 'bytes': per-device result bytes summed over runs
    (an all-gather's gathered result, a reduce-scatter's input), 'ici_bytes':
    bytes one device sends in a ring implementation}}.  `*-done` halves of
    async pairs are not counted again.
  """
  comps = parse_computations(hlo)
  runs = executions(comps)
  found: dict[Any, tuple[str, int, int, int]] = {}   # key -> (kind, bytes, group, runs)
  for comp, lines in comps.items():
    times = runs.get(comp, 0)
    for i, line in enumerate(lines):
      m = _INSTR.match(line)
      sizes = array_bytes(m.group(2)) if m else []
      if not sizes:
        continue
      # TPU async collective fusions repeat one collective (same channel_id) in the
      # continuation fusions that overlap it with compute: count it once, at its
      # outermost placement.
      ch = re.search(r'channel_id=(\d+)', line)
      key = ('ch', ch.group(1)) if ch else (comp, i)
      kind, size = m.group(3), max(b for _, b in sizes)
      if key in found:
        k0, b0, g0, t0 = found[key]
        found[key] = (k0, max(b0, size), g0, min(t0, times))
      else:
        found[key] = (kind, size, max(1, _group_size(line, num_devices)), times)
  out = {k: dict(count=0, executed=0, bytes=0.0, ici_bytes=0.0) for k in KINDS}
  for kind, size, g, times in found.values():
    if kind == 'reduce-scatter':
      size *= g
    share = (g - 1) / g
    sent = {'all-gather': share, 'reduce-scatter': share, 'all-reduce': 2 * share,
            'all-to-all': share, 'collective-permute': 1.0}[kind] * size
    o = out[kind]
    o['count'] += 1
    o['executed'] += times
    o['bytes'] += size * times
    o['ici_bytes'] += sent * times
  return out


def largest_buffers(hlo: str, top: int = 5) -> list[dict[str, Any]]:
  """The `top` biggest distinct array shapes the module produces (per device), biggest first.

  Each is named by the JAX op that made it first (from the HLO metadata).
  """
  seen: dict[str, tuple[int, str]] = {}
  for line in hlo.splitlines():
    m = re.match(r'^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(\w+\[[0-9,]*\])', line)
    if not m or m.group(2) in seen:
      continue
    sizes = array_bytes(m.group(2))
    if sizes:
      op = re.search(r'op_name="([^"]+)"', line)
      seen[m.group(2)] = (sizes[0][1], op.group(1).split('/')[-1] if op else m.group(1))
  best = sorted(seen.items(), key=lambda kv: -kv[1][0])[:top]
  return [dict(shape=shape, op=op, bytes=b) for shape, (b, op) in best]


def estimate(c: Chip, flops_per_device: float, hbm_traffic_bytes: float,
             ici_bytes_per_device: float) -> dict[str, Any]:
  """Roofline step-time ESTIMATE: the slowest of compute, HBM traffic and ICI.

  Returns:
    {'compute_s', 'hbm_s', 'ici_s', 'step_time_s', 'bound', 'mfu'} with
    mfu = compute_s / step_time_s (1.0 when compute bound).
  """
  t = dict(compute_s=flops_per_device / c.peak_flops,
           hbm_s=hbm_traffic_bytes / c.hbm_bandwidth,
           ici_s=ici_bytes_per_device / c.ici_bandwidth)
  bound = max(t, key=t.get)
  step = t[bound]
  return dict(t, step_time_s=step, bound=bound.removesuffix('_s'),
              mfu=t['compute_s'] / step if step > 0 else 0.0, label='ESTIMATE (roofline)')


def largest_array(hlo: str) -> tuple[int, str]:
  """(elements, shape) of the biggest array any instruction of the module produces."""
  best = (0, '')
  for line in hlo.splitlines():
    m = re.match(r'^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s+[\w\-]+\(', line)
    if not m:
      continue
    for dtype, dims in _ARRAY.findall(m.group(1)):
      n = math.prod(int(d) for d in dims.split(',') if d) if dims else 1
      if n > best[0]:
        best = (n, f'{dtype}[{dims}]')
  return best
