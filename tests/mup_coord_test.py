"""Coordinate check (Tensor Programs V, Sec. D.1) as a test: muP is flat in width, SP is not.

Small on purpose (3-4 widths, 3 steps; seeds are vmapped, so they are nearly free);
`experiments/coord_check.py` runs the full version (widths up to 2048 for the MLP) and plots it.
The flatness bound is the README's: |slope| <= 0.07 for every muP layer at t = 2, 3.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import numpy as np

from hyperinit.mup import coord

SEEDS = tuple(range(8))


def _assert_flat(res, tol=0.07):
  for layer, s in res.slopes().items():
    for t in (1, 2):                       # t = 2 and t = 3 (after 1 and 2 updates)
      assert abs(s[t]) <= tol, f'{layer} slope {s[t]:+.3f} at t={t + 1}\n{res.table()}'


def test_mlp_coordinate_check():
  widths = (64, 256, 1024)
  mup_adam = coord.run_setups(coord.mlp_setup('mup', 'adam', 0.01), widths, seeds=SEEDS)
  mup_sgd = coord.run_setups(coord.mlp_setup('mup', 'sgd', 1.0), widths, seeds=SEEDS)
  sp_adam = coord.run_setups(coord.mlp_setup('sp', 'adam', 0.01), widths, seeds=SEEDS)
  _assert_flat(mup_adam)
  _assert_flat(mup_sgd)
  # Zero-initialised readout: exactly 0 at t=1, Theta(1) after an update.
  assert np.all(mup_adam.acts['readout'][0] == 0) and np.all(mup_adam.acts['readout'][1] > 0.01)
  sp = sp_adam.slopes()
  assert np.all(sp['readout'][1:] >= 0.5), sp_adam.table()     # SP logits blow up with width
  assert np.all(sp['hidden_1'][1:] >= 0.3), sp_adam.table()


def test_transformer_coordinate_check():
  # Four widths: at 64-256 only, the small-width part of the zero-initialised readout's
  # decay still shows (worst layer 0.078 at t=3); with 512 it is 0.062 (block_0/mlp).
  widths = (64, 128, 256, 512)
  kw = dict(batch=2, seq_len=16, tie_embeddings=False)
  mup_adam = coord.run_setups(coord.transformer_setup('mup', 'adam', 0.01, **kw), widths,
                              seeds=SEEDS)
  # SP's growth is large (logits slope 0.50 / 0.80 / 1.69 at t = 1, 2, 3): 3 widths, 2 seeds.
  sp_adam = coord.run_setups(coord.transformer_setup('sp', 'adam', 0.01, **kw), (64, 128, 256),
                             seeds=SEEDS[:2])
  assert len(mup_adam.acts) >= 20          # every embedding, projection, norm, block, logits
  _assert_flat(mup_adam)
  assert np.all(sp_adam.slopes()['output'][1:] >= 0.5), sp_adam.table()


def test_transformer_depth_coordinate_check():
  """Depth 2 -> 8 at width 64: under CompleteP (depth_alpha=1) the residual stream the final
  norm reads and the logits stay flat in depth once every layer has moved (t=3); under SP the
  updates pile up along the residual stream (slope ~ +0.9, the stream grows like depth)."""
  depths, seeds = (2, 4, 8), SEEDS[:4]
  kw = dict(tie_embeddings=False)
  complete_p = coord.run_setups(coord.transformer_depth_setup('mup', 'adam', 0.01,
                                                              depth_alpha=1.0, **kw),
                                depths, seeds=seeds)
  sp = coord.run_setups(coord.transformer_depth_setup('sp', 'adam', 0.01, **kw), depths,
                        seeds=seeds)
  cp_s, sp_s = complete_p.slopes(), sp.slopes()
  # measured: CompleteP residual -0.06, logits +0.02 at t=3; SP residual +0.72 / +0.94 at
  # t=2 / 3.  (At init CompleteP's 1/L branch multiplier shrinks the random branches' sum
  # toward the embedding: residual slope -0.26 at t=1; see docs/mup.md.)
  for layer in ('residual', 'output'):
    assert abs(cp_s[layer][2]) <= 0.1, f'{layer}\n{complete_p.table()}'
  assert np.all(sp_s['residual'][1:] >= 0.5), sp.table()
  assert sp_s['residual'][2] - abs(cp_s['residual'][2]) >= 0.5
