"""µTransfer: base-HP search, width sweep, depth sweep (configs/mup_sweep.py presets).

    python -m experiments.mup_sweep --config=configs/mup_sweep.py:search --workdir=workdir/mup_search
    python -m experiments.mup_sweep --config=configs/mup_sweep.py:width --workdir=workdir/mup_width
    python -m experiments.mup_sweep --config=configs/mup_sweep.py:depth --workdir=workdir/mup_depth

Rerunning the same command continues an interrupted run.  Sweeps write
results.json, metrics.jsonl, summary.json, table.md and sweep.png to the
workdir and a copy of results.json to `config.results_file`; the search writes
base_hps.json (and the copy the width sweep reads).
"""

import os
import shutil

from absl import app, flags, logging

from experiments import _errors
from hyperinit.studies import mup_search, mup_sweep as sweep, mup_sweep_report as report

_CONFIG = _errors.define_config_file(
    'configs/mup_sweep.py', 'Sweep config[:search|width|depth[,smoke][,steps=N]].',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/mup_sweep', 'where the results go')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  # no workdir: a sweep resumes from its finished points (no checkpoints), never remove them
  with _errors.user_errors('mup_sweep'):
    _run(_CONFIG.value, _WORKDIR.value)


def _run(config, workdir):
  if config.mode == 'search':
    out = mup_search.run_search(config, workdir, log=logging.info)
    print(f'base HPs {out["base_hps"]} at log2 LR {out["log2_lr"]:g} (train-tail '
          f'{out["loss"]:.4f}; SP at the base {out["sp_loss"]:.4f} at {out["sp_log2_lr"]:g}); '
          f'{len(out["trials"])} trials, {out["seconds"] / 60:.1f} min; wrote '
          f'{workdir}/base_hps.json' + (f' and {config.results_file}' if config.results_file
                                        else ''))
    return
  results = sweep.run_sweep(config, workdir, log=logging.info)
  labels = {'mup': 'CompleteP (muP, depth_alpha=1)'} if config.mode == 'depth' else None
  summary = report.write_outputs(workdir, results, labels)
  print(report.tables(summary, config.mode, results['baselines']))
  if config.results_file:
    os.makedirs(os.path.dirname(config.results_file) or '.', exist_ok=True)
    shutil.copyfile(f'{workdir}/results.json', config.results_file)
  print(f'\nwall time of this run: {results["seconds"] / 60:.1f} min; wrote {workdir}/'
        '{results.json, metrics.jsonl, summary.json, table.md, sweep.png}'
        + (f' and {config.results_file}' if config.results_file else ''))


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
