"""Predict a model's params with a GHN and save them.

    python -m experiments.predict --target=gpt2-large --ghn_dir=workdir/ghn --out=workdir/gpt2l_pred
    python -m experiments.predict --target=gpt2 --ghn_dir=workdir/ghn --out=workdir/gpt2_hf \
        --format=hf
    python -m experiments.predict --target=L6-D128-H4 --ghn_dir=runs/gpt_ghn/ghn --out=preds/l6
    python -m experiments.predict --target=L6-D128-H4-P2,num_classes=10 --ghn_dir=... --out=...

--target: a model preset, or the GHN eval log's notation L<layers>-D<width>-H<heads>
[-P<patch>][-M<mlp>] (task fields from the GHN's training config), then optional
`,key=value` model-config overrides (hyperinit/train/predict_job.py).  A target wider
than a LoGAH GHN's max_dim is predicted with wrap-around and a warning.

The default output is a params directory that `checkpoint.load_params` and
`python -m experiments.train --config.init_from=OUT` read.  A non-empty --out is
refused before predicting unless --overwrite.  Without --ghn_dir an untrained GHN
(seed --seed) is used: useful only for smoke tests.
"""

import jax
from absl import app, flags, logging

from experiments import _errors
from hyperinit import _logging, models
from hyperinit.logah import ghn as ghn_lib, saving
from hyperinit.train import destinations, memory, predict_job

_TARGET = flags.DEFINE_string('target', None, 'Model preset (gpt2-large) or GHN notation '
                              '(L6-D128-H4, ViT L6-D128-H4-P2), then ,key=value overrides.',
                              required=True)
_GHN_DIR = flags.DEFINE_string('ghn_dir', None, 'A GHN saved by hyperinit.logah.saving.save_ghn '
                               '(train_ghn writes WORKDIR/ghn).')
_SEED = flags.DEFINE_integer('seed', 0, 'GHN init seed when --ghn_dir is not given.')
_OUT = flags.DEFINE_string('out', None, 'Output directory (written atomically).', required=True)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out.')
_FORMAT = flags.DEFINE_enum('format', 'orbax', ['orbax', 'hf'], 'params directory (orbax params '
                            '+ meta, for init_from), or a Hugging Face directory (any exportable '
                            'family, e.g. GPT-2).')
_MAX_MEM = flags.DEFINE_float('max_memory_gb', None, 'Refuse targets whose params (twice: '
                              'predicted + written) exceed this; default: the memory available '
                              'now; 0: no check.')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)   # the 'wrote' line; orbax/grain/tfds stay quiet
  _logging.quiet_libraries(_errors.verbose())
  with _errors.user_errors('predict'):
    destinations.check_output(_OUT.value, _OVERWRITE.value, '--out')   # before any work
    target = predict_job.resolve_target(_TARGET.value, _GHN_DIR.value)
    limit = None if _MAX_MEM.value is None else int(_MAX_MEM.value * memory.GB)
    predict_job.check_memory(target, limit)
    if _GHN_DIR.value:
      cfg, params = saving.load_ghn(_GHN_DIR.value)
    else:
      logging.warning('no --ghn_dir: predicting with an untrained GHN (seed %d)', _SEED.value)
      cfg = ghn_lib.GHNConfig()
      params = ghn_lib.init(cfg, jax.random.key(_SEED.value))
    predict_job.predict_to(_OUT.value, target, cfg, params, fmt=_FORMAT.value,
                           overwrite=_OVERWRITE.value,
                           info={'predicted_by': _GHN_DIR.value or 'untrained GHN',
                                 'target': _TARGET.value})
  logging.info('wrote %s params of %s to %s', f'{models.count_params(target):,}', _TARGET.value,
               _OUT.value)


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
