"""HyperCloning at the paper's horizon: several sources, factors and schedules per seed.

    from configs import clone_horizon
    results = clone_horizon_lib.run(clone_horizon.get_config(), 'workdir/clone_horizon')

Each *arm* (configs/clone_horizon.py) is a single-source, single-factor configs/clone.py
experiment: `arm_config` builds it, `clone_experiment.train_clones` runs it.  Sources are
trained once per seed and shared by the arms that clone them; an arm with a `baseline`
reads that arm's random-init run instead of training its own (same destination, same
trainer config).  Every run is an ordinary trainer workdir, so a rerun of the same
command skips finished runs.  `clone_horizon_report` writes the summary and the report.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

from hyperinit import errors
from hyperinit.studies import clone_experiment as experiment
from hyperinit.studies import clone_horizon_report as report
from hyperinit.studies import clone_report
from hyperinit.train import metrics as metrics_lib


def parse_overrides(text: str) -> dict[str, Any]:
  """'a.b=1,c=0.5' -> {'a.b': 1, 'c': 0.5} (int, float, bool or str values)."""
  out: dict[str, Any] = {}
  for item in filter(None, (s.strip() for s in text.split(','))):
    key, sep, raw = item.partition('=')
    if not sep or not key:
      raise ValueError(f'target override {item!r}: expected key=value')
    for conv in (int, float):
      try:
        out[key] = conv(raw)
        break
      except ValueError:
        continue
    else:
      out[key] = {'true': True, 'false': False}.get(raw.lower(), raw)
  return out


def _set(config: Any, key: str, value: Any) -> None:
  *parents, leaf = key.split('.')
  node = config
  for name in parents:
    if name not in node:
      raise errors.UnknownKeyError(f'target override {key!r}: the trainer config has no field '
                                   f'{name!r}')
    node = node[name]
  if leaf not in node:
    raise errors.UnknownKeyError(f'target override {key!r}: the trainer config has no field '
                                 f'{leaf!r}')
  node[leaf] = value


def arm_config(config: Any, name: str, source_dir: str | None = None) -> Any:
  """The configs/clone.py experiment config of arm `name` (a copy of `config.base`).

  `source_dir` (the trained source's workdir) is needed only by a muP arm: it is
  the base model of the clone's muP run.
  """
  arm = config.arms[name]
  c = copy.deepcopy(config.base)
  c.unlock()
  for k, v in config.sources[arm.source].items():
    c.source.model[k] = v
  c.clone.factor = int(arm.factor)
  c.variants = tuple(arm.variants)
  for k, v in parse_overrides(arm.target).items():
    _set(c.target, k, v)
  c.clone.with_opt_state = bool(arm.get('with_opt_state', False))
  if arm.mup_source_base:
    c.target.mup.enabled = True
    c.target.mup.base.name = source_dir or '<source workdir>'
  return c


def _arm_seeds(config: Any, name: str) -> list[int]:
  s = config.arms[name].get('seeds')
  return [int(x) for x in (config.seeds if s is None else s) if int(x) in set(config.seeds)]


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs every seed and arm of `config` in `workdir`; writes and returns the summary."""
  metrics_lib.quiet_libraries()
  t0, cpu0 = time.perf_counter(), experiment.cpu_seconds()
  workdir = os.path.abspath(workdir)
  seeds = [int(s) for s in config.seeds]
  # arms that train their own random init first (ConfigDict sorts its keys)
  arms = sorted(config.arms.keys(), key=lambda a: bool(config.arms[a].baseline))
  for name in arms:
    b = config.arms[name].baseline
    if b and (b not in arms or arms.index(b) > arms.index(name) or config.arms[b].baseline):
      raise ValueError(f'arm {name!r}: baseline {b!r} must be an earlier arm that trains its '
                       f'own random init; arms: {arms}')
    arm_config(config, name)  # a bad override stops here, before any training
  count = [0]
  # per seed and arm: its source (once per seed), a clone + a training run per variant, random
  n_stages = sum(len({config.arms[a].source for a in arms if s in _arm_seeds(config, a)})
                 for s in seeds) + sum(
                     len(_arm_seeds(config, a)) * (2 * len(config.arms[a].variants)
                                                   + (not config.arms[a].baseline))
                     for a in arms)

  def stage(msg):
    count[0] += 1
    experiment.banner(f'[{count[0]}/{n_stages}] {msg}  ({time.perf_counter() - t0:.0f} s '
                      'elapsed)')

  per_arm: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in arms}
  for seed in seeds:
    sdir = os.path.join(workdir, f'seed_{seed}')
    sources = {}
    for name in arms:
      if seed not in _arm_seeds(config, name):
        continue
      arm = config.arms[name]
      if arm.source not in sources:
        src_conf = arm_config(config, name)
        sources[arm.source] = experiment.train_source(
            src_conf, os.path.join(sdir, f'source_{arm.source}'), seed,
            lambda m, s=arm.source: stage(f'{m}: {s}'))
      src, src_rec = sources[arm.source]
      c = arm_config(config, name, src.path)
      adir = os.path.join(sdir, name)
      rdir = os.path.join(sdir, arm.baseline or name, 'random')
      out = experiment.train_clones(c, src, adir, seed,
                                    lambda m, n=name: stage(f'[{n}] {m}'), random_dir=rdir,
                                    train_random=not arm.baseline, src_final=src_rec.final_loss)
      per_arm[name][seed] = {'runs': [src_rec] + out['runs'], 'checks': out['checks'],
                             'src_cfg': src.cfg, 'dst_cfg': out['dst_cfg']}
  arm_results = {}
  for name in arms:
    if per_arm[name]:
      any_seed = next(iter(per_arm[name].values()))
      arm_results[name] = clone_report.summarize(
          arm_config(config, name), per_arm[name], any_seed['src_cfg'], any_seed['dst_cfg'],
          wall_s=0.0)
  results = report.summarize(config, arm_results, wall_s=time.perf_counter() - t0,
                             cpu_s=experiment.cpu_seconds() - cpu0)
  report.write_report(workdir, results)
  experiment.say(report.console_summary(results, workdir))
  return results


__all__ = ['arm_config', 'parse_overrides', 'run']
