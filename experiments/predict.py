"""Predict a model's params with a GHN and save them.

    python -m experiments.predict --target=gpt2-large --ghn_dir=workdir/ghn --out=workdir/gpt2l_pred
    python -m experiments.predict --target=gpt2 --ghn_dir=workdir/ghn --out=workdir/gpt2_hf --format=hf

The default output is a params directory that `checkpoint.load_params` and
`python -m experiments.train --config.init_from=OUT` read.  Without --ghn_dir an
untrained GHN (seed --seed) is used: useful only for smoke tests.
"""

from absl import app, flags, logging
import jax

from experiments import _errors
from hyperinit import checkpoint, interop, models
from hyperinit.logah import ghn as ghn_lib, saving

_TARGET = flags.DEFINE_string('target', None, 'model preset name, e.g. gpt2-large', required=True)
_GHN_DIR = flags.DEFINE_string('ghn_dir', None, 'a GHN saved by hyperinit.logah.saving.save_ghn')
_SEED = flags.DEFINE_integer('seed', 0, 'GHN init seed when --ghn_dir is not given')
_OUT = flags.DEFINE_string('out', None, 'output directory', required=True)
_FORMAT = flags.DEFINE_enum('format', 'orbax', ['orbax', 'hf'], 'params directory (orbax params + meta, for init_from), or a '
                            'Hugging Face directory (any exportable family, e.g. GPT-2)')


def main(argv):
  del argv
  with _errors.user_errors('predict'):
    _predict()


def _predict():
  target = models.get_config(_TARGET.value)
  if _GHN_DIR.value:
    cfg, params = saving.load_ghn(_GHN_DIR.value)
  else:
    logging.warning('no --ghn_dir: predicting with an untrained GHN (seed %d)', _SEED.value)
    cfg = ghn_lib.GHNConfig()
    params = ghn_lib.init(cfg, jax.random.key(_SEED.value))
  predicted = ghn_lib.predict(cfg, params, target)
  if _FORMAT.value == 'hf':
    interop.save_hf(_OUT.value, target, predicted)
  else:
    checkpoint.save_model(_OUT.value, target, predicted, info={'predicted_by': _GHN_DIR.value or 'untrained GHN'})
  logging.info('wrote %s params of %s to %s', models.count_params(target), _TARGET.value, _OUT.value)


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
