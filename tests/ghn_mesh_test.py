"""GHN meta-training on a mesh (8 forced host CPU devices): equal to one device, exact resume.
Two real JAX processes: tests/ghn_mesh_multiprocess_test.py."""


import jax
import numpy as np
import pytest

from configs import ghn as ghn_configs
from hyperinit import sharding
from hyperinit.logah import meta, meta_mesh, tasks
from hyperinit.train import ghn as train, ghn_step

# fp32: the mesh sums the meta-batch's losses and gradients in another order (per device, then
# a psum).  Metrics (losses, accuracies, grad norm) agree to RTOL / ATOL.  The state after 2
# steps differed by at most 1.7e-5 (measured): gradient entries that are near-zero sums of
# cancelling terms differ in their float noise, which Adam's normalisation turns into O(lr)
# updates (the trainer's cross-mesh test allows atol 1e-5 for the same reason).
RTOL, ATOL = 1e-5, 1e-6
STATE_ATOL = 5e-5


def _config(data_dir, **mesh):
  cfg = ghn_configs.get_config('smoke')
  cfg.data.data_dir = data_dir
  cfg.pool.update(size=4, meta_batch=4, depths=(1, 2))   # one group of 4: 2 per device on data
  cfg.meta.noise = 0.1                      # exercises the per-target keys (global index)
  cfg.eval_targets, cfg.eval_every, cfg.num_steps = False, 0, 6
  cfg.checkpoint.update(every=3, async_save=False)
  cfg.mesh.update(mesh)
  return cfg


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_meta_step_on_a_mesh_equals_one_device(data_dir):
  cfg = _config(data_dir)
  ghn_cfg, meta_cfg = tasks.ghn_config(cfg), tasks.meta_config(cfg)
  _, groups = tasks.make_pool(cfg)
  group = groups[0]
  loader = iter(tasks.data_loader(cfg, 'train', train=True, seed=0, batch_size=32))
  batches = [tasks.meta_batch(next(loader)) for _ in range(2)]
  graphs = meta.batch_for(group)
  key = jax.random.key(5)

  one = meta.init_state(ghn_cfg, meta_cfg, jax.random.key(0))
  statics = dict(ghn_cfg=ghn_cfg, meta_cfg=meta_cfg, targets=group)
  one_step = meta.meta_step.lower(one, graphs, batches[0], key, **statics).compile(
      compiler_options=ghn_step.FAST_COMPILE)
  one_m = []
  for i, b in enumerate(batches):
    one, m = one_step(one, graphs, b, jax.random.fold_in(key, i))
    one_m.append(m)

  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  rules = sharding.make_rules()
  state = ghn_step.init_meta_state(ghn_cfg, meta_cfg, jax.random.key(0), mesh, rules)
  # The GHN's params are FSDP-split by their specs (largest axis over 'fsdp' where it divides).
  placed = sharding.describe(jax.tree.map(lambda x: x.sharding, state['params']))
  assert any('fsdp' in p for p in placed.values()), placed
  step = ghn_step.make_meta_step(ghn_cfg, meta_cfg, mesh, rules,
                                 compiler_options=ghn_step.FAST_COMPILE)
  rep, rows = sharding.replicated(mesh), ghn_step.row_sharding(mesh)
  g = ghn_step.to_global(graphs, rep)
  for i, b in enumerate(batches):
    state, m = step(state, g, ghn_step.to_global(b, rows), jax.random.fold_in(key, i), group)
    for k in ('loss', 'task_losses', 'accuracies', 'grad_norm'):
      np.testing.assert_allclose(m[k], one_m[i][k], rtol=RTOL, atol=ATOL, err_msg=k)
  assert state['params']['log_gain']['kernel'].sharding.mesh.shape == mesh.shape
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(_leaves(state), _leaves(one)))
  print(f'max |mesh - one device| over the state after 2 steps: {diff:.3g}')
  for a, b in zip(_leaves(state), _leaves(one)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=STATE_ATOL)

  # An uneven split (4 targets over 8 devices along data: 4 devices idle) gives the same eval.
  mesh8 = sharding.make_mesh({'data': 8})
  ev8 = ghn_step.make_eval_step(ghn_cfg, mesh8, compiler_options=ghn_step.FAST_COMPILE)(
      ghn_step.to_global(one['params'], sharding.replicated(mesh8)),
      ghn_step.to_global(graphs, sharding.replicated(mesh8)),
      ghn_step.to_global(batches[0], ghn_step.row_sharding(mesh8)), group)
  _, m1 = meta.meta_loss(one['params'], graphs, batches[0], ghn_cfg=ghn_cfg, targets=group, l2=0.0)
  np.testing.assert_allclose(ev8[0], m1['task_losses'], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(ev8[1], m1['accuracies'], rtol=RTOL, atol=ATOL)


def test_bad_meshes_raise(data_dir):
  with pytest.raises(ValueError, match='mesh.tensor must be 1'):
    meta_mesh.check_mesh(sharding.make_mesh({'data': 4, 'tensor': 2}))
  cfg = _config(data_dir, data=1, fsdp=-1)
  cfg.data.batch_size = 36       # 36 rows over 8 devices along fsdp
  with pytest.raises(ValueError, match='36 rows does not split over mesh axis'):
    train.make_mesh(cfg)
  with pytest.raises(ValueError, match='needs 16 devices, have 8'):
    train.make_mesh(_config(data_dir, data=4, fsdp=4))
  assert [list(r) for r in meta_mesh.slices(3, 2)] == [[0, 1], [2]]
  assert [list(r) for r in meta_mesh.slices(2, 4)] == [[0], [1], [], []]


def test_resume_on_a_mesh_is_exact(data_dir, tmp_path):
  cfg = _config(data_dir, data=2, fsdp=4)
  straight = train.train_ghn(cfg, str(tmp_path / 'a'))
  assert straight['done']
  train.train_ghn(cfg, str(tmp_path / 'b'), stop_at=3)
  resumed = train.train_ghn(cfg, str(tmp_path / 'b'))
  assert resumed['step'] == 6
  for x, y in zip(_leaves(straight['state']), _leaves(resumed['state'])):
    np.testing.assert_array_equal(x, y)
