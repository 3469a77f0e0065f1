"""Speedup arithmetic and the report (markdown + PNG) of a clone-then-train experiment.

Definitions (stated in every report):
  L_R      the random-init model's validation loss at its last step M.
  t_X      the first step from which run X's validation loss stays <= L_R
           until the end (linear interpolation between the two evaluations
           around the last crossing; 0 if X starts and stays below L_R).
  speedup  t_random / t_clone (t_random = M unless the random curve stayed
           below L_R earlier).  The source's own training is not counted,
           as in the paper.
  compute-adjusted speedup  t_random / (t_clone + S * c): the source's S
           steps counted at c = (source FLOPs / destination FLOPs) per step
           (6N + 12LTD per token, `train.flops_per_token`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from typing import Any, Sequence

import numpy as np

from hyperinit import _io, models
from hyperinit.studies import plots
from hyperinit.train import tasks

DEFINITIONS = (
    '- **L_R**: the random-init model\'s validation loss at its last step (full validation '
    'split).\n'
    '- **t_X**: the first step from which run X\'s validation loss stays ≤ L_R until the end of '
    'its run (linear interpolation between the two evaluations around that crossing; evaluations '
    'every {eval_every} steps; 0 if X starts below L_R and stays there).\n'
    '- **speedup** = t_random / t_clone (t_random = the random run\'s length unless its curve '
    'stayed below L_R earlier). Like the paper, this does not count the source\'s training.\n'
    '- **compute-adjusted speedup** = t_random / (t_clone + S·c), counting the source\'s S '
    'steps at c = {c:.3f} destination steps each (FLOPs per token 6N + 12·L·T·D: source '
    '{src_fpt:,.0f}, destination {dst_fpt:,.0f}).')


def steps_to_stay_below(curve: Sequence[Sequence[float]], target: float) -> float | None:
  """First (interpolated) step from which `curve` [(step, loss)] stays <= target; None: never."""
  pts = [(float(s), float(v)) for s, v in curve]
  if not pts or pts[-1][1] > target:
    return None
  above = [i for i, (_, v) in enumerate(pts) if v > target]
  if not above:
    return pts[0][0]
  k = above[-1]
  (s0, v0), (s1, v1) = pts[k], pts[k + 1]
  return s0 + (v0 - target) / (v0 - v1) * (s1 - s0)


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
  """(mean, sample std (ddof 1; 0 for one value)) over seeds; the one copy for the reports."""
  a = np.asarray(xs, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def fmt_ms(xs: Sequence[float], prec: int = 3) -> str:
  if not xs:
    return 'n/a'
  m, s = mean_std(xs)
  return f'{m:.{prec}f}' + (f' ± {s:.{prec}f}' if len(xs) > 1 else '')


def _speedup_cell(xs: Sequence[dict[str, Any]], key: str) -> str:
  """mean ± std over seeds, or the per-seed values when one is unbounded / below 1."""
  vals = [x[key] for x in xs]
  if all(v is not None for v in vals):
    return fmt_ms(vals, 2) + '×'
  per_seed = ['< 1 (never reaches L_R)' if x['status'] == 'not_reached' else
              '∞ (never above L_R)' if x[key] is None else f'{x[key]:.2f}×' for x in xs]
  return 'per seed: ' + ', '.join(per_seed)


def summarize(config: Any, per_seed: dict[int, dict[str, Any]], src_cfg: models.ModelConfig,
              dst_cfg: models.ModelConfig, wall_s: float,
              cpu_s: float | None = None) -> dict[str, Any]:
  """A JSON-able dict of curves, speedups and settings."""
  seq = int(config.target.data.seq_len)
  src_fpt, dst_fpt = tasks.flops_per_token(src_cfg, seq), tasks.flops_per_token(dst_cfg, seq)
  c = src_fpt / dst_fpt
  s_steps = int(config.source.num_train_steps)
  runs, rows = [], []
  for seed, out in per_seed.items():
    recs = {r.name: r for r in out['runs']}
    rnd = recs['random']
    l_r = rnd.final_loss
    t_r = steps_to_stay_below(rnd.evals, l_r)
    for r in out['runs']:
      runs.append(dataclasses.asdict(r))
      if r.kind != 'clone':
        continue
      t_c = steps_to_stay_below(r.evals, l_r)
      status = 'not_reached' if t_c is None else 'starts_below' if t_c == 0 else 'reached'
      rows.append(dict(
          name=r.name, seed=seed, variant=r.variant, dropout=r.dropout, status=status,
          random_final=l_r, t_random=t_r, t_clone=t_c,
          speedup=(t_r / t_c) if status == 'reached' else None,
          adjusted=(t_r / (t_c + s_steps * c)) if t_c is not None else None,
          start_loss=r.evals[0][1], final_loss=r.final_loss,
          source_final=recs['source'].final_loss,
          sym_start=r.symmetry[0][1] if r.symmetry else None,
          sym_end=r.symmetry[-1][1] if r.symmetry else None,
          random_sym_end=rnd.symmetry[-1][1] if rnd.symmetry else None))
  checks = [c_ for out in per_seed.values() for c_ in out['checks']]
  import jax  # pylint: disable=g-import-not-at-top
  return dict(
      created=datetime.datetime.now().isoformat(timespec='seconds'),
      machine=dict(cpus=os.cpu_count(), load_avg=list(os.getloadavg()),
                   python=platform.python_version(),
                   jax=jax.__version__, device=str(jax.devices()[0].device_kind)),
      wall_s=wall_s, cpu_s=cpu_s, seeds=[int(s) for s in per_seed], variants=list(config.variants),
      clone=dict(config.clone), source_steps=s_steps,
      target_steps=int(config.target.num_train_steps),
      eval_every=int(config.target.eval_every), seq_len=seq,
      batch_size=int(config.target.batch_size),
      optimizer={k: v for k, v in config.target.optimizer.items()},
      src_cfg=src_cfg.to_dict(), dst_cfg=dst_cfg.to_dict(),
      src_params=models.count_params(src_cfg), dst_params=models.count_params(dst_cfg),
      flops=dict(src_per_token=src_fpt, dst_per_token=dst_fpt, ratio=c),
      logits_checks=checks, rows=rows, runs=runs, title=str(config.get('title') or ''),
      command=str(config.get('command') or ''))


# --- plots ----------------------------------------------------------------------------------

_COLORS = {'random': 'black', 'noisy_symmetric': 'tab:blue', 'symmetric': 'tab:orange',
           'diagonal': 'tab:green', 'noisy_diagonal': 'tab:red', 'source': 'tab:gray'}


def _color(name: str) -> str:
  return _COLORS.get(name.split('+')[0], 'tab:purple')


def mean_curve(curves: list[list]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves]))
  vals = np.array([[dict(c)[s] for s in steps] for c in curves])
  return np.array(steps), vals.mean(0), vals.min(0), vals.max(0)


def plot_losses(results: dict[str, Any], path: str) -> None:
  """Validation loss vs step: (a) source, (b) clones vs random (seed mean, min-max band)."""
  plt = plots.pyplot()
  runs = results['runs']
  names = [n for n in dict.fromkeys(r['name'] for r in runs) if n != 'source']
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=110,
                             gridspec_kw={'width_ratios': [1, 2]})
  st, m, lo, hi = mean_curve([r['evals'] for r in runs if r['name'] == 'source'])
  a.plot(st, m, 'o-', ms=3, color=_color('source'))
  a.fill_between(st, lo, hi, color=_color('source'), alpha=0.2)
  a.set_title(f'(a) source {_arch(results["src_cfg"])}', fontsize=9)
  for name in names:
    st, m, lo, hi = mean_curve([r['evals'] for r in runs if r['name'] == name])
    b.plot(st, m, marker='o' if name == 'random' else '.', ms=3, color=_color(name),
           ls='--' if '+dropout' in name else '-', label=name + (' init' if name == 'random'
                                                                  else ' clone'))
    if len(results['seeds']) > 1:
      b.fill_between(st, lo, hi, color=_color(name), alpha=0.15)
  l_r = float(np.mean([r['evals'][-1][1] for r in runs if r['name'] == 'random']))
  b.axhline(l_r, color='gray', ls=':', label=f'random final loss L_R = {l_r:.3f}')
  for row_name in dict.fromkeys(r['name'] for r in results['rows']):
    ts = [r['t_clone'] for r in results['rows'] if r['name'] == row_name]
    if all(t is not None for t in ts):
      b.axvline(float(np.mean(ts)), color=_color(row_name), ls=':', alpha=0.6,
                label=f'{row_name}: t_clone (stays below L_R from here)')
  b.set_title(f'(b) destination {_arch(results["dst_cfg"])}: clone vs random init, same '
              'trainer config', fontsize=9)
  lows = [v for r in runs for _, v in r['evals']]
  top = min(max(lows), float(np.percentile(lows, 97)) + 0.2)
  for ax in (a, b):
    ax.set_xlabel('training step')
    ax.set_ylabel('validation loss (nats/token)')
    ax.set_ylim(min(lows) - 0.05, top)
    ax.grid(alpha=0.3)
  b.legend(fontsize=8)
  plots.save(fig, path)


def plot_symmetry(results: dict[str, Any], path: str) -> None:
  """symmetry/overall vs step per run (mean over seeds)."""
  plt = plots.pyplot()
  runs = [r for r in results['runs'] if r['symmetry']]
  fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
  for name in dict.fromkeys(r['name'] for r in runs):
    st, m, lo, hi = mean_curve([r['symmetry'] for r in runs if r['name'] == name])
    ax.plot(st, m, marker='.', color=_color(name), ls='--' if '+dropout' in name else '-',
            label=name + (' (init)' if name == 'random' else ''))
    if len(results['seeds']) > 1:
      ax.fill_between(st, lo, hi, color=_color(name), alpha=0.15)
  ax.set_xlabel('training step')
  ax.set_ylabel('symmetry: mean cosine of cloned halves')
  ax.set_title('symmetry of the clone\'s copies during training')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  plots.save(fig, path)


# --- markdown -------------------------------------------------------------------------------

def _arch(d: dict[str, Any]) -> str:
  return (f'{d["family"]} {d["num_layers"]}x{d["embed_dim"]} ({d["num_heads"]} heads, '
          f'mlp {d["mlp_dim"]})')


def results_table(results: dict[str, Any]) -> str:
  """Markdown table: one row per clone run name (mean ± std over seeds) plus random."""
  rows = results['rows']
  head = ('| run | seeds | val loss at step 0 | final val loss | t_clone (steps) | speedup | '
          'compute-adjusted | symmetry start → end |\n|---|---|---|---|---|---|---|---|\n')
  out = []
  for name in dict.fromkeys(r['name'] for r in rows):
    xs = [r for r in rows if r['name'] == name]
    ts = [r['t_clone'] for r in xs if r['t_clone'] is not None]
    adj = [r['adjusted'] for r in xs if r['adjusted'] is not None]
    sym = (f'{fmt_ms([r["sym_start"] for r in xs], 2)} → '
           f'{fmt_ms([r["sym_end"] for r in xs], 3)}'
           if xs[0]['sym_start'] is not None else 'n/a')
    out.append(f'| {name} clone | {len(xs)} | {fmt_ms([r["start_loss"] for r in xs])} | '
               f'{fmt_ms([r["final_loss"] for r in xs])} | '
               f'{fmt_ms(ts, 0) if len(ts) == len(xs) else "not reached"} | '
               f'{_speedup_cell(xs, "speedup")} | '
               f'{fmt_ms(adj, 2) + "×" if len(adj) == len(xs) else "n/a"} | {sym} |')
  rnd = [r for r in results['runs'] if r['name'] == 'random']
  rsym = [r['symmetry'][-1][1] for r in rnd if r['symmetry']]
  out.append(f'| random init | {len(rnd)} | {fmt_ms([r["evals"][0][1] for r in rnd])} | '
             f'{fmt_ms([r["evals"][-1][1] for r in rnd])} | '
             f'{fmt_ms(list({r["seed"]: r["t_random"] for r in rows}.values()), 0)} '
             f'(t_random) | 1× | — | {fmt_ms(rsym, 3) if rsym else "n/a"} |')
  return head + '\n'.join(out) + '\n'


def _notes(r0: dict[str, Any]) -> list[str]:
  """Caveats the numbers need, as markdown lines."""
  out = []
  src_final = float(np.mean([r['evals'][-1][1] for r in r0['runs'] if r['name'] == 'source']))
  l_r = float(np.mean([r['evals'][-1][1] for r in r0['runs'] if r['name'] == 'random']))
  if src_final <= l_r:
    out.append(f'Note: the source already reaches {src_final:.3f} < L_R = {l_r:.3f}, so each '
               'clone starts below L_R; t_clone counts the steps until it stays below L_R after '
               'its early loss bump (learning-rate warm-up; see the curves). This is a short '
               'horizon: train the destination longer for the paper\'s measure.')
  else:
    out.append(f'Random init passes the source within the run: L_R = {l_r:.3f} is '
               f'{src_final - l_r:.3f} nats below the source\'s final loss {src_final:.3f}, so '
               't_clone is the time the clone needs to learn what random init learns in the '
               'whole run (the paper\'s horizon).')
  starts = [r for r in r0['rows'] if r['status'] == 'starts_below']
  if starts:
    out.append(f'{len(starts)} clone run{"" if len(starts) == 1 else "s"} never rose above L_R: '
               'their speedup is unbounded.')
  out += reading_notes(r0)
  return [' '.join(out), ''] if out else []


def reading_notes(results: dict[str, Any]) -> list[str]:
  """What the curves show, in words, from the seed-mean curves: a clone's early rise above its
  step-0 loss and where it peaks, and how its symmetry moves (start, lowest, end)."""
  out = []
  for name in dict.fromkeys(r['name'] for r in results['runs']):
    runs = [r for r in results['runs'] if r['name'] == name]
    if name in ('source', 'random') or not runs[0]['evals']:
      continue
    st, m, _, _ = mean_curve([r['evals'] for r in runs])
    k = int(np.argmax(np.where(st <= st[-1] / 2, m, -np.inf)))   # the peak in the first half
    if m[k] > m[0] + 1e-3:
      out.append(f'The {name} clone starts at the source\'s loss ({m[0]:.3f}) and first rises, to '
                 f'{m[k]:.3f} by step {st[k]:.0f} (the early rise, in the first half of training), '
                 'then falls.')
    if runs[0]['symmetry']:
      st, y, _, _ = mean_curve([r['symmetry'] for r in runs])
      j = int(np.argmin(y))
      if 0 < j < len(y) - 1 and y[-1] > y[j] + 1e-3:
        out.append(f'Its symmetry goes from {y[0]:.3f} down to {y[j]:.3f} (step {st[j]:.0f}) and '
                   f'rises back to {y[-1]:.3f} by step {st[-1]:.0f}: training pulls the copies '
                   'together again.')
  return out


def render(results: dict[str, Any]) -> str:
  """The report markdown."""
  r0 = results
  src, dst = r0['src_cfg'], r0['dst_cfg']
  seeds = r0['seeds']
  src_runs = [r for r in r0['runs'] if r['name'] == 'source']
  src_final = [r['evals'][-1][1] for r in src_runs]
  errs = [c['rel_error'] for c in r0['logits_checks']]
  opt = r0['optimizer']
  tokens = r0['batch_size'] * r0['seq_len']
  cl = r0['clone']
  walls = ', '.join(f'{r["name"]} (seed {r["seed"]}) {r["wall_s"]:.0f} s' for r in r0['runs'])
  lines = [
      f'# {r0["title"] or "HyperCloning: clone vs random init"}', '',
      f'Created {r0["created"]}' + (f' by `{r0["command"]}`' if r0['command'] else '') +
      f'; total wall time {r0["wall_s"]:.0f} s' +
      (f' ({r0["cpu_s"]:.0f} CPU-seconds)' if r0.get('cpu_s') is not None else '') +
      f' on {r0["machine"]["cpus"]} CPU cores (load average at the end '
      f'{r0["machine"]["load_avg"][0]:.1f}; the machine may be shared; runs reused from an '
      'earlier invocation count 0 s).',
      '', '## Setup', '',
      f'- **Source**: {_arch(src)}, {r0["src_params"]:,} params, trained {r0["source_steps"]} '
      f'steps (same optimizer settings, its own schedule); final validation loss '
      f'{fmt_ms(src_final)}.',
      f'- **Clone**: factors {cl.get("factor")}x ({cl.get("attention")}), variants '
      f'{", ".join(r0["variants"])}, noise {cl.get("snr_db")} dB SNR; destination {_arch(dst)}, '
      f'{r0["dst_params"]:,} params. Logits check (fp32, validation tokens): '
      f'max |clone − source| '
      f'/ max |source| ≤ {max(errs):.1e} over {len(errs)} clone{"" if len(errs) == 1 else "s"}.',
      f'- **Random init**: the same destination architecture, the preset\'s initialiser '
      f'(`{dst["init"]}`, std {dst["init_std"]}).',
      f'- **Both destination runs**: {r0["target_steps"]} steps, batch {r0["batch_size"]} × '
      f'{r0["seq_len"]} tokens ({tokens:,} tokens/step), {opt["name"]} lr {opt["learning_rate"]} '
      f'({opt["schedule"]}, warm-up {opt["warmup_steps"]}, min ratio {opt["min_lr_ratio"]}), '
      f'β=({opt["b1"]}, {opt["b2"]}), weight decay {opt["weight_decay"]}, clip '
      f'{opt["grad_clip_norm"]}; same data order; seeds {seeds}.',
      '', '## Result', '', results_table(r0)] + _notes(r0) + ['### Definitions', '',
      DEFINITIONS.format(eval_every=r0['eval_every'], c=r0['flops']['ratio'],
                         src_fpt=r0['flops']['src_per_token'],
                         dst_fpt=r0['flops']['dst_per_token']), '',
      '![validation loss](loss_curves.png)', '',
      '## Symmetry', '',
      'Mean cosine similarity between the cloned copies of each weight row (`cloning.symmetry`),'
      ' logged at every evaluation. 1 = the copies are identical (the extra width computes '
      'nothing new); the random-init model gives the chance level.', '',
      '![symmetry](symmetry.png)', '',
      f'Wall time per run: {walls}.', '']
  return '\n'.join(lines)


def write_report(workdir: str, results: dict[str, Any]) -> None:
  """results.json, report.md, loss_curves.png, symmetry.png in `workdir` (each atomic)."""
  os.makedirs(workdir, exist_ok=True)
  _io.atomic_write(os.path.join(workdir, 'results.json'), json.dumps(results, indent=1))
  plot_losses(results, os.path.join(workdir, 'loss_curves.png'))
  if any(r['symmetry'] for r in results['runs']):
    plot_symmetry(results, os.path.join(workdir, 'symmetry.png'))
  _io.atomic_write(os.path.join(workdir, 'report.md'), render(results))


def console_summary(results: dict[str, Any], workdir: str) -> str:
  """A few lines for the terminal."""
  out = ['', '===== result =====']
  for name in dict.fromkeys(r['name'] for r in results['rows']):
    xs = [r for r in results['rows'] if r['name'] == name]
    out.append(f'{name} clone: speedup {_speedup_cell(xs, "speedup")} to reach the random '
               f'model\'s final validation loss {fmt_ms([r["random_final"] for r in xs])} '
               f'(t_clone {fmt_ms([r["t_clone"] or 0 for r in xs], 0)} vs t_random '
               f'{fmt_ms([r["t_random"] for r in xs], 0)} steps; compute-adjusted incl. the '
               f'source\'s {results["source_steps"]} steps: '
               f'{fmt_ms([r["adjusted"] for r in xs if r["adjusted"] is not None], 2)}×)')
  out += [line for line in _notes(results) if line]
  out.append(f'report: {os.path.join(workdir, "report.md")} (+ loss_curves.png, symmetry.png, '
             f'results.json); total {results["wall_s"]:.0f} s'
             + (f', {results["cpu_s"]:.0f} CPU-s' if results.get('cpu_s') is not None else ''))
  return '\n'.join(out)


__all__ = ['DEFINITIONS', 'console_summary', 'fmt_ms', 'mean_curve', 'plot_losses', 'plot_symmetry', 'render',
           'results_table', 'steps_to_stay_below', 'summarize', 'write_report']
