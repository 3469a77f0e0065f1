"""Metrics: TensorBoard event files (tensorboardX, no TensorFlow), `metrics.jsonl`,
and the progress line.

Only process 0 writes.  On resume, `metrics.jsonl` is truncated to the
restored step (rewritten atomically), so steps replayed after a crash are not
recorded twice.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
from absl import logging

from hyperinit import _io, _logging


class MetricsWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard events.

  Each jsonl line is {'step': int, 'split': 'train' | 'eval', name: value, ...}.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate(resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(os.path.join(workdir, 'tb'), purge_step=resume_step or None)

  def _truncate(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        if json.loads(line)['step'] <= step:
          keep.append(line if line.endswith('\n') else line + '\n')
      except (ValueError, KeyError):
        continue  # a line cut short by a kill
    if len(keep) != len(lines):
      _io.atomic_write(self.path, ''.join(keep))

  def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'split': split}
    row.update({k: float(v) for k, v in scalars.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    for k, v in scalars.items():
      self._tb.add_scalar(f'{split}/{k}', float(v), int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def write_tensorboard(logdir: str, series: Mapping[str, Any]) -> None:
  """Writes one finished run as TensorBoard events in `logdir` (replaced if it exists).

  For studies whose runs are not trainer runs (sweeps): `series` is {tag: [(step, value), ...]}.
  Only process 0 writes.
  """
  if jax.process_index() != 0:
    return
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  if os.path.isdir(logdir):          # a run cut short and rerun: no duplicate points
    for name in os.listdir(logdir):
      os.remove(os.path.join(logdir, name))
  writer = SummaryWriter(logdir)
  try:
    for tag, points in series.items():
      for step, value in points:
        writer.add_scalar(tag, float(value), int(step))
  finally:
    writer.close()


def read_jsonl(workdir: str) -> list[dict[str, Any]]:
  """The rows of `<workdir>/metrics.jsonl`."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class Progress:
  """Rate / ETA bookkeeping for the progress line."""

  def __init__(self, start_step: int, total_steps: int, units_per_step: int, unit: str):
    self.total, self.units, self.unit = total_steps, units_per_step, unit
    self._t, self._step = time.perf_counter(), start_step

  def line(self, step: int, scalars: Mapping[str, float]) -> tuple[str, dict[str, float]]:
    """('step 100/1000 | loss 2.31 | 5.2 steps/s | 42000 tokens/s | ETA 2:53', rates)."""
    now = time.perf_counter()
    dt, ds = now - self._t, step - self._step
    self._t, self._step = now, step
    rate = ds / dt if dt > 0 else float('nan')
    eta = (self.total - step) / rate if rate > 0 else float('inf')
    rates = {'steps_per_sec': rate, f'{self.unit}_per_sec': rate * self.units}
    parts = [f'step {step}/{self.total}'] + [f'{k} {v:.4g}' for k, v in scalars.items()]
    parts += [f'{rate:.2f} steps/s', f'{rate * self.units:.0f} {self.unit}/s',
              f'ETA {_fmt_time(eta)}']
    return ' | '.join(parts), rates


def log(msg: str) -> None:
  logging.info(msg)


def quiet_libraries(verbose: bool = False) -> None:
  """Hides orbax's, grain's and tfds' INFO lines (warnings and errors still show); see
  `hyperinit._logging.quiet_libraries`."""
  _logging.quiet_libraries(verbose=verbose)
