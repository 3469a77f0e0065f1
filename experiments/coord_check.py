"""Coordinate check: mean |activation| per layer vs width, SP vs muP (PNG grid + slopes).

    python -m experiments.coord_check --config=configs/coord_check.py --workdir=workdir/coord_check
"""

import os

from absl import app, flags

from experiments import _errors
from hyperinit import _io
from hyperinit.mup import coord
from hyperinit.studies import plots

_CONFIG = _errors.define_config_file('configs/coord_check.py', 'Coordinate-check config[:preset].',
                                     lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/coord_check', 'where PNGs and slopes.json go')


def main(argv):
  del argv
  with _errors.user_errors('coord_check', _WORKDIR.value):
    _run(_CONFIG.value, _WORKDIR.value)


def _run(cfg, workdir):
  os.makedirs(workdir, exist_ok=True)
  study = coord.run_study(cfg)
  summary = {}
  for model, rows in study.items():
    path = os.path.join(workdir, f'coord_{model}.png')
    plots.coord_grid(rows, path, title=f'{model}: mean |activation| vs width')
    summary[model] = {'widths': list(next(iter(rows.values())).widths), 'slopes': {}}
    for label, res in rows.items():
      print(f'\n== {model} {label}: log-log slope of mean |act| vs width ==\n{res.table()}')
      summary[model]['slopes'][label] = {k: [None if v != v else round(float(v), 4) for v in s]
                                         for k, s in res.slopes().items()}
    print(f'wrote {path}')
  _io.write_json(os.path.join(workdir, 'slopes.json'), summary)


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
