"""`experiments.predict` -> `experiments.train --config.init_from=OUT`, as a user runs them.

The prediction is written in checkpoint's params-directory format; the trainer
must start from exactly those params, so its step-0 eval loss equals the loss of
the predicted model computed here, in-process, from the same GHN.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from hyperinit import checkpoint, models
from hyperinit.logah import ghn as ghn_lib
from hyperinit.train import loop, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FLAGS = ('--config=configs/lm.py:tiny', '--config.data.dataset=synthetic',
               '--config.data.seq_len=32', '--config.batch_size=8', '--config.eval_batches=2',
               '--config.num_train_steps=2', '--config.optimizer.warmup_steps=1',
               '--config.eval_at_start=True', '--config.model.name=init_from')


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  out = subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_predict_then_train_init_from_starts_from_the_prediction(tmp_path):
  out = str(tmp_path / 'pred')
  _run('experiments.predict', '--target=gpt2-tiny', f'--out={out}', '--seed=3')
  params, cfg = checkpoint.load_params(out)
  assert cfg == models.get_config('gpt2-tiny')
  # the file holds exactly what the GHN predicts (same untrained GHN: seed 3)
  ghn_cfg = ghn_lib.GHNConfig()
  want = ghn_lib.predict(ghn_cfg, ghn_lib.init(ghn_cfg, jax.random.key(3)), cfg)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(want))

  workdir = str(tmp_path / 'run')
  _run('experiments.train', *TRAIN_FLAGS, f'--config.init_from={out}', f'--workdir={workdir}')
  step0 = [r for r in metrics.read_jsonl(workdir) if r['split'] == 'eval' and r['step'] == 0]
  assert len(step0) == 1
  # the predicted model's own loss on the same eval batches, computed here
  import train_testing  # pylint: disable=g-import-not-at-top
  conf = train_testing.tiny_lm_config(2, **{'batch_size': 8, 'eval_batches': 2,
                                            'optimizer.warmup_steps': 1})
  s = loop.setup(conf, model_cfg=cfg, devices=jax.devices()[:1])
  ref = loop.evaluate(s, conf, want)
  np.testing.assert_allclose(step0[0]['loss'], ref['loss'], rtol=1e-5)
  meta = checkpoint.read_meta(out)
  assert json.dumps(meta['model_config'], sort_keys=True) == json.dumps(cfg.to_dict(),
                                                                         sort_keys=True)


def test_predict_hf_format_loads_in_transformers(tmp_path):
  from hf_testing import require_hf  # pylint: disable=g-import-not-at-top
  torch, T = require_hf()
  out = str(tmp_path / 'pred_hf')
  _run('experiments.predict', '--target=gpt2-tiny', f'--out={out}', '--seed=3', '--format=hf')
  cfg = models.get_config('gpt2-tiny')
  ghn_cfg = ghn_lib.GHNConfig()
  want = ghn_lib.predict(ghn_cfg, ghn_lib.init(ghn_cfg, jax.random.key(3)), cfg)
  model, info = T.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                       attn_implementation='eager',
                                                       output_loading_info=True)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys')), info
  tokens = np.array(jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size))  # writable
  model.eval()
  with torch.no_grad():
    theirs = model(input_ids=torch.from_numpy(tokens)).logits.numpy()
  ours = np.asarray(models.apply_fn(cfg)(want, tokens))
  # The same tolerance as the interop tests: 1e-4 of max |logit| (fp32).
  assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
  # and checkpoint.load_params reads the HF directory back bit for bit
  back, cfg2 = checkpoint.load_params(out)
  assert cfg2.embed_dim == cfg.embed_dim
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(back), jax.device_get(want))
