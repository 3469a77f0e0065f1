"""Summary, tables and plots of the horizon experiment (hyperinit.studies.clone_horizon).

One record per (arm, variant, seed) with the clone's and random init's validation curves,
the source's and random init's final losses, the step speedup t_random / t_clone and the
compute-adjusted speedup (definitions: clone_report.DEFINITIONS), the final-loss gap at
equal steps, and the size of the clone's early loss spike.  `results.json` is what
docs/results/clone_experiment.json commits.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from typing import Any

import numpy as np

from hyperinit import _io
from hyperinit.studies import clone_report as cr
from hyperinit.studies import plots


DEFINITIONS = (
    '- **L_R**: random init\'s final validation loss; **t_X**: the first step from which run X '
    'stays ≤ L_R until the end (interpolated between evaluations every {eval_every} steps; 0 if '
    'it starts and stays below). **step speedup** = t_random / t_clone (the paper\'s measure; '
    'the source\'s training not counted). **compute-adjusted** = t_random / (t_clone + S·c): '
    'the source\'s S steps at c = source / destination training FLOPs per token (6N + 12·L·T·D)'
    '. **final gap** = clone final − random final after the same number of steps. **spike**: '
    'the largest rise of the clone\'s validation loss above its step-0 value in the first '
    'quarter of its run (the learning-rate re-warm-up).')


def spike(curve: list, steps: int) -> tuple[float, float]:
  """(rise, step): how far the loss rises above its step-0 value in the first quarter of the
  run, and the step of that maximum ((0, 0) if it never rises)."""
  pts = [(s, v) for s, v in curve if s <= steps / 4]
  s_max, v_max = max(pts, key=lambda p: p[1])
  rise = v_max - pts[0][1]
  return (float(rise), float(s_max)) if rise > 0 else (0.0, 0.0)


def stall(curve: list, drop: float = 0.05) -> float | None:
  """Steps until the loss is `drop` below its step-0 value (interpolated): how long the
  clone's head start stays frozen while the learning rate re-warms; None if never."""
  s0, target = curve[0][0], curve[0][1] - drop
  for (sa, va), (sb, vb) in zip(curve, curve[1:]):
    if vb <= target:
      return float(sa + (va - target) / (va - vb) * (sb - sa)) - s0
  return None


def _at(curve: list, step: float) -> float:
  """The loss at the first evaluation at or after `step`."""
  return next(v for s, v in curve if s >= step)


def _records(name: str, arm: Any, res: dict[str, Any], margin: float) -> list[dict[str, Any]]:
  runs = {(r['name'], r['seed']): r for r in res['runs']}
  out = []
  for row in res['rows']:
    seed = row['seed']
    clone, rnd = runs[(row['name'], seed)], runs[('random', seed)]
    rise, at = spike(clone['evals'], clone['steps'])
    out.append(dict(
        arm=name, variant=row['variant'], factor=int(arm.factor), source=arm.source,
        seed=seed, target=str(arm.target), mup_source_base=bool(arm.mup_source_base),
        with_opt_state=bool(arm.get('with_opt_state', False)),
        source_final=row['source_final'], random_final=row['random_final'],
        clone_final=row['final_loss'], final_gap=row['final_loss'] - row['random_final'],
        horizon_ok=row['random_final'] <= row['source_final'] - margin,
        t_clone=row['t_clone'], t_random=row['t_random'], status=row['status'],
        step_speedup=row['speedup'], compute_adjusted_speedup=row['adjusted'],
        spike_rise=rise, spike_step=at, stall_steps=stall(clone['evals']),
        quarter_loss=_at(clone['evals'], clone['steps'] / 4),
        random_quarter_loss=_at(rnd['evals'], clone['steps'] / 4), symmetry_end=row['sym_end'],
        clone_curve=clone['evals'], random_curve=rnd['evals'],
        source_steps=res['source_steps'], target_steps=res['target_steps'],
        flops_ratio=res['flops']['ratio'], src_params=res['src_params'],
        dst_params=res['dst_params']))
  return out


def summarize(config: Any, arm_results: dict[str, dict[str, Any]], wall_s: float,
              cpu_s: float | None = None) -> dict[str, Any]:
  """A JSON-able summary: settings, per-arm settings and one record per clone run."""
  import jax  # pylint: disable=g-import-not-at-top
  recs = [r for name, res in arm_results.items()
          for r in _records(name, config.arms[name], res, float(config.margin))]
  arms = {name: dict(source=a.source, factor=int(a.factor), variants=list(a.variants),
                     baseline=a.baseline, target=a.target, mup_source_base=a.mup_source_base,
                     with_opt_state=bool(a.get('with_opt_state', False)),
                     src_cfg=arm_results[name]['src_cfg'], dst_cfg=arm_results[name]['dst_cfg'],
                     logits_checks=arm_results[name]['logits_checks'])
          for name, a in config.arms.items() if name in arm_results}
  any_res = next(iter(arm_results.values()))
  return dict(
      created=datetime.datetime.now().isoformat(timespec='seconds'),
      title=str(config.title), command=str(config.command), wall_s=wall_s, cpu_s=cpu_s,
      machine=dict(cpus=os.cpu_count(), load_avg=list(os.getloadavg()),
                   python=platform.python_version(), jax=jax.__version__),
      seeds=[int(s) for s in config.seeds], margin=float(config.margin),
      source_steps=any_res['source_steps'], target_steps=any_res['target_steps'],
      eval_every=any_res['eval_every'], seq_len=any_res['seq_len'],
      batch_size=any_res['batch_size'], optimizer=any_res['optimizer'], arms=arms,
      records=recs)


def _cell(xs: list, prec: int = 2, suffix: str = '') -> str:
  vals = [x for x in xs if x is not None]
  if len(vals) < len(xs):
    return 'per seed: ' + ', '.join('—' if x is None else f'{x:.{prec}f}{suffix}' for x in xs)
  return cr.fmt_ms(vals, prec) + suffix


def _group(records: list, *keys: str) -> dict[tuple, list]:
  out: dict[tuple, list] = {}
  for r in records:
    out.setdefault(tuple(r[k] for k in keys), []).append(r)
  return out


def speedup_table(results: dict[str, Any], arms: tuple[str, ...] = ('f2', 'f4', 'big_f2')) -> str:
  """Markdown: per (arm, variant) over seeds, the horizon and speedup numbers."""
  head = ('| arm | variant | seeds | source final | random final (L_R) | clone final | '
          'final gap | t_clone | step speedup | compute-adjusted |\n'
          '|---|---|---|---|---|---|---|---|---|---|\n')
  lines = []
  groups = _group([r for r in results['records'] if r['arm'] in arms], 'arm', 'variant')
  for (arm, variant), xs in sorted(groups.items(), key=lambda kv: arms.index(kv[0][0])):
    a = results['arms'][arm]
    label = f'{arm}: {a["source"]} ×{a["factor"]}'
    lines.append(
        f'| {label} | {variant} | {len(xs)} | {_cell([x["source_final"] for x in xs], 3)} | '
        f'{_cell([x["random_final"] for x in xs], 3)} | {_cell([x["clone_final"] for x in xs], 3)}'
        f' | {_cell([x["final_gap"] for x in xs], 3)} | {_cell([x["t_clone"] for x in xs], 0)} |'
        f' {_cell([x["step_speedup"] for x in xs], 2, "×")} | '
        f'{_cell([x["compute_adjusted_speedup"] for x in xs], 2, "×")} |')
  return head + '\n'.join(lines) + '\n'


def warmup_table(results: dict[str, Any]) -> str:
  """Markdown: the warm-up study (noisy symmetric f2 clone under other schedules)."""
  recs = [r for r in results['records'] if r['arm'].startswith('ws_') or
          (r['arm'] == 'f2' and r['variant'] == 'noisy_symmetric')]
  study_seeds = {r['seed'] for r in recs if r['arm'].startswith('ws_')}
  head = ('| schedule | seeds | spike (max rise over step 0, first quarter) | stall (steps to '
          '0.05 below step 0) | loss at 1/4 of the run (random) | t_clone | step speedup | '
          'final loss |\n|---|---|---|---|---|---|---|---|\n')
  lines = []
  for (arm,), xs in _group([r for r in recs if r['seed'] in study_seeds], 'arm').items():
    a = results['arms'][arm]
    label = ('default (warm-up 10%, peak lr)' if arm == 'f2' else
             'widened Adam moments, the source\'s run resumed wider' if a.get('with_opt_state')
             else 'muP, the source as base' if a['mup_source_base'] else a['target'])
    lines.append(f'| {arm}: {label} | {len(xs)} | {_cell([x["spike_rise"] for x in xs], 3)} '
                 f'(step {_cell([x["spike_step"] for x in xs], 0)}) | '
                 f'{_cell([x["stall_steps"] for x in xs], 0)} | '
                 f'{_cell([x["quarter_loss"] for x in xs], 3)} '
                 f'({_cell([x["random_quarter_loss"] for x in xs], 3)}) | '
                 f'{_cell([x["t_clone"] for x in xs], 0)} | '
                 f'{_cell([x["step_speedup"] for x in xs], 2, "×")} | '
                 f'{_cell([x["clone_final"] for x in xs], 3)} |')
  return head + '\n'.join(lines) + '\n'


def plot_curves(results: dict[str, Any], path: str) -> None:
  """Validation loss vs step: one panel per arm group, seed mean with min-max band."""
  plt = plots.pyplot()
  panels = [('f2', ('f2',)), ('f4 vs big_f2 (same destination)', ('f4', 'big_f2')),
            ('warm-up study (f2 noisy symmetric)',
             tuple(a for a in results['arms'] if a.startswith('ws_')) + ('f2',))]
  panels = [(t, arms) for t, arms in panels
            if any(r['arm'] in arms for r in results['records']) and
            (not t.startswith('warm-up') or any(a in results['arms'] for a in arms[:-1]))]
  fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.2), dpi=100,
                           squeeze=False)
  for ax, (title, arms) in zip(axes[0], panels):
    recs = [r for r in results['records'] if r['arm'] in arms]
    study = title.startswith('warm-up')
    if study:
      seeds = {r['seed'] for r in recs if r['arm'] != 'f2'}
      recs = [r for r in recs if r['seed'] in seeds and r['variant'] == 'noisy_symmetric']
    for (arm, variant), xs in _group(recs, 'arm', 'variant').items():
      st, m, lo, hi = cr.mean_curve([x['clone_curve'] for x in xs])
      label = (arm if study else f'{arm} {variant}')
      ax.plot(st, m, '.-', ms=3, label=label)
      ax.fill_between(st, lo, hi, alpha=0.15)
    for arm in dict.fromkeys(r['arm'] for r in recs if not results['arms'][r['arm']]['baseline']):
      xs = [r for r in recs if r['arm'] == arm]
      st, m, _, _ = cr.mean_curve(list({x['seed']: x['random_curve'] for x in xs}.values()))
      ax.plot(st, m, 'k-', lw=1.5, label=f'random init ({arm} destination)')
    for src, ls in zip(dict.fromkeys(r['source'] for r in recs), (':', '-.')):
      ax.axhline(float(np.mean([x['source_final'] for x in recs if x['source'] == src])),
                 color='gray', ls=ls, label=f'{src} source final')
    vals = [v for r in recs for _, v in r['clone_curve']]
    ax.set_ylim(min(vals) - 0.05, float(np.percentile(vals, 99)) + 0.3)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('destination training step')
    ax.set_ylabel('validation loss (nats/token)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  plots.save(fig, path)


def render(results: dict[str, Any]) -> str:
  """The report markdown."""
  r = results
  opt = r['optimizer']
  arms = '\n'.join(f'- `{n}`: {a["source"]} source ({a["src_cfg"]["num_layers"]}×'
                   f'{a["src_cfg"]["embed_dim"]}) ×{a["factor"]} → {a["dst_cfg"]["num_layers"]}×'
                   f'{a["dst_cfg"]["embed_dim"]}, variants {", ".join(a["variants"])}'
                   + (f', trainer overrides `{a["target"]}`' if a['target'] else '')
                   + (', muP with the source as base' if a['mup_source_base'] else '')
                   + (', Adam moments widened, the source run resumed' if a.get('with_opt_state')
                      else '')
                   + (f'; random baseline of `{a["baseline"]}`' if a['baseline'] else '')
                   for n, a in r['arms'].items())
  bad = [x for x in r['records'] if not x['horizon_ok']]
  errs = [c['rel_error'] for a in r['arms'].values() for c in a['logits_checks']]
  return '\n'.join([
      f'# {r["title"]}', '',
      f'Created {r["created"]}' + (f' by `{r["command"]}`' if r['command'] else '') +
      f'; wall {r["wall_s"]:.0f} s' + (f', {r["cpu_s"]:.0f} CPU-s' if r['cpu_s'] else '') +
      f' on {r["machine"]["cpus"]} cores (load at the end {r["machine"]["load_avg"][0]:.1f}; '
      'reused runs count 0 s).', '',
      f'Sources {r["source_steps"]} steps, destinations {r["target_steps"]} steps; batch '
      f'{r["batch_size"]} × {r["seq_len"]} tokens; {opt["name"]} lr {opt["learning_rate"]}, '
      f'{opt["schedule"]}, warm-up {opt["warmup_steps"]}; seeds {r["seeds"]}; evaluation of '
      f'the whole validation split every {r["eval_every"]} steps. Logits check of every clone '
      f'≤ {max(errs):.1e} (relative, fp32).', '', arms, '',
      '## Speedup at the horizon', '',
      (f'Horizon condition (random final ≤ source final − {r["margin"]}) holds for every run.'
       if not bad else f'Horizon condition (random final ≤ source final − {r["margin"]}) fails '
       f'for {len(bad)} record(s): ' + ', '.join(f'{x["arm"]}/{x["variant"]}/seed {x["seed"]}'
                                                 for x in bad) + '.'), '',
      speedup_table(r), '',
      DEFINITIONS.format(eval_every=r['eval_every']), '',
      '## Warm-up study', '', warmup_table(r), '',
      '![curves](curves.png)', ''])


def write_report(workdir: str, results: dict[str, Any]) -> None:
  """results.json, report.md and curves.png in `workdir` (each atomic)."""
  os.makedirs(workdir, exist_ok=True)
  _io.atomic_write(os.path.join(workdir, 'results.json'), json.dumps(results, indent=1))
  plot_curves(results, os.path.join(workdir, 'curves.png'))
  _io.atomic_write(os.path.join(workdir, 'report.md'), render(results))


def console_summary(results: dict[str, Any], workdir: str) -> str:
  """The speedup table and where the report is."""
  return '\n'.join(['', '===== result =====', speedup_table(results), warmup_table(results),
                    f'report: {os.path.join(workdir, "report.md")}; total '
                    f'{results["wall_s"]:.0f} s'])


__all__ = ['console_summary', 'plot_curves', 'render', 'speedup_table', 'spike', 'stall',
           'summarize',
           'warmup_table', 'write_report']
