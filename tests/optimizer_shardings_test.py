"""Optimizer-state shardings for every optimizer kind under DP, FSDP and TP (issue 30.1).

Each optimizer's state is sharded leaf by leaf after its params (`step.state_shardings`),
one step runs under each mesh, and the state saved under one mesh restores onto the next
(DP -> FSDP -> TP -> DP) through the `Checkpointer`.  The model is a hand-written
annotated MLP language model (8 forced CPU devices, compiles in well under a second) whose
kernels are at least 128 wide on both sides, so Adafactor factors them: its row / column
statistics have the tree of the params but not their shapes (the bug: they got the
params' shardings and failed to build).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import lm as lm_configs
from hyperinit import mup, sharding
from hyperinit import spec as spec_lib
from hyperinit.checkpoint import Checkpointer
from hyperinit.train import optim, step as step_lib

S = spec_lib.ParamSpec
SPECS = {'embed': S(('vocab', 'embed'), (0,), 'embedding'),
         'wi': {'kernel': S(('embed', 'mlp'), (0,)), 'bias': S(('mlp',))},
         'wo': {'kernel': S(('mlp', 'embed'), (0,))},
         'norm': {'scale': S(('embed',), (), 'norm')},
         'head': {'kernel': S(('embed', 'vocab'), (0,), 'readout')}}
SIZES = {'vocab': 256, 'embed': 128, 'mlp': 256}       # both kernel sides >= 128: factored
BASE_SIZES = {'vocab': 256, 'embed': 64, 'mlp': 128}   # the muP base
MESHES = {'dp': {'data': -1}, 'fsdp': {'fsdp': -1}, 'tp': {'tensor': -1}}
BATCH = 16


def _shapes(sizes):
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(sizes[a] for a in s.axes),
                                                     jnp.float32), SPECS)


SHAPES = _shapes(SIZES)


def _init_params(psh):
  """Host-side init placed into its shards (no init program to compile)."""
  rng = np.random.default_rng(0)
  return jax.device_put(jax.tree.map(
      lambda s, x: np.ones(x.shape, np.float32) if s.role == 'norm'
      else 0.05 * rng.standard_normal(x.shape, np.float32), SPECS, SHAPES), psh)


def _loss(params, batch, rng):
  del rng
  x = params['embed'][batch['inputs']]                                    # [B, D]
  h = jax.nn.gelu(x @ params['wi']['kernel'] + params['wi']['bias'])      # [B, M]
  x = (x + h @ params['wo']['kernel']) * params['norm']['scale']
  logits = x @ params['head']['kernel']                                   # [B, V]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets']).mean(), {}


def _mults():
  return mup.width_multipliers(SPECS, SHAPES, base_specs=SPECS, base_shapes=_shapes(BASE_SIZES))


def _trainer_optimizer(kind, mults):
  opt = lm_configs.get_config('tiny').optimizer
  opt.name = kind
  opt.schedule, opt.warmup_steps = 'constant', 0   # a warm-up's first step would not move
  opt.weight_decay = 0.1      # a masked decay: the norm gain and bias-like leaves are skipped
  return optim.from_config(opt, 10, SPECS, mults)[0]


# Every kind the trainer's builder offers (through it), and every other kind of the muP
# builder, in the standard and the muP parametrisation.
CASES = ([(f'trainer-{k}-{p}', 'trainer', k, p) for k in optim.OPTIMIZERS for p in ('sp', 'mup')]
         + [(f'mup-{k}-{p}', 'mup', k, p) for k in mup.KINDS if k not in optim.OPTIMIZERS
            for p in ('sp', 'mup')])


def _optimizer(builder, kind, param):
  mults = _mults() if param == 'mup' else None
  if builder == 'trainer':
    return _trainer_optimizer(kind, mults)
  return mup.make_optimizer(kind, 1e-3, mults=mults)


def _batch(mesh, seed):
  rng = np.random.default_rng(seed)
  bsh = sharding.batch_sharding(mesh, ndim=1)
  return {k: jax.device_put(rng.integers(0, SIZES['vocab'], BATCH).astype(np.int32), bsh)
          for k in ('inputs', 'targets')}, {'inputs': bsh, 'targets': bsh}


def _setup(tx, mesh_name):
  mesh = sharding.make_mesh(MESHES[mesh_name])
  psh = sharding.tree_shardings(SHAPES, SPECS, mesh)
  shardings = step_lib.state_shardings(psh, tx, mesh, SHAPES)
  return mesh, psh, shardings


def _check_follows_params(opt_shardings, opt_abstract, psh):
  """A state leaf shaped like its param is sharded like it; every sharding fits its leaf."""
  flat_p = spec_lib.flatten(psh, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
  leaves = jax.tree_util.tree_leaves_with_path(opt_abstract)
  shs = jax.tree.leaves(opt_shardings)
  assert len(leaves) == len(shs)
  followed = 0
  for (path, leaf), sh in zip(leaves, shs):
    sh.shard_shape(leaf.shape)    # raises if the spec does not fit the leaf
    name = spec_lib.path_str(path)
    param = next((p for p in flat_p if name.endswith('/' + p)), None)
    if param is not None and leaf.shape == spec_lib.flatten(SHAPES)[param].shape:
      assert sh.spec == flat_p[param].spec, (name, sh.spec, flat_p[param].spec)
      followed += 1
  return followed


def _factored(opt_shardings, opt_abstract, field):
  """{param path: spec} of Adafactor's `field` ('v_row' / 'v_col') leaves."""
  out = {}
  for (path, _), sh in zip(jax.tree_util.tree_leaves_with_path(opt_abstract),
                           jax.tree.leaves(opt_shardings)):
    name = spec_lib.path_str(path)
    if f'/{field}/' in f'/{name}':
      out[name.split(f'{field}/', 1)[1]] = sh.spec
  return out


@pytest.mark.parametrize('name,builder,kind,param', CASES, ids=[c[0] for c in CASES])
def test_state_shards_steps_and_restores_across_meshes(tmp_path, name, builder, kind, param):
  tx = _optimizer(builder, kind, param)
  opt_abstract = jax.eval_shape(tx.init, SHAPES)
  ckpt = Checkpointer(tmp_path, async_save=False, keep=5)
  saved = None
  order = ('dp', 'fsdp', 'tp', 'dp')
  for i, mesh_name in enumerate(order):
    mesh, psh, shardings = _setup(tx, mesh_name)
    followed = _check_follows_params(shardings.opt_state, opt_abstract, psh)
    assert followed > 0 or kind == 'sgd', name     # plain SGD has no per-param state
    if kind == 'adafactor' and mesh_name != 'dp':
      rows = _factored(shardings.opt_state, opt_abstract, 'v_row')
      cols = _factored(shardings.opt_state, opt_abstract, 'v_col')
      # wi/kernel (embed 128, mlp 256): v_row keeps the embed dim, v_col the mlp dim
      want_row, want_col = (P('fsdp'), P(None)) if mesh_name == 'fsdp' else (P(None), P('tensor'))
      assert rows['wi/kernel'] == want_row and cols['wi/kernel'] == want_col, (rows, cols)
      assert rows['norm/scale'] == cols['norm/scale'] == P(None)   # unfactored: shape (1,)
    target = step_lib.abstract_state(tx, SHAPES, shardings)
    if i == 0:
      state = step_lib.state_from_params(_init_params(psh), tx, jax.random.key(0), shardings)
    else:
      state, _ = ckpt.restore(target, step=i)
      jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), saved)
      for x, t in zip(jax.tree.leaves(state), jax.tree.leaves(target)):
        assert x.sharding.is_equivalent_to(t.sharding, x.ndim), (name, mesh_name)
    if i == len(order) - 1:
      break
    batch, bsh = _batch(mesh, i)
    train_step = step_lib.make_train_step(_loss, tx, shardings, bsh)
    before = jax.device_get(state.params)
    state, metrics = train_step(state, batch)
    assert np.isfinite(float(metrics['loss'])), (name, mesh_name)
    assert int(state.step) == i + 1
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.params))))
    saved = jax.device_get(state)
    ckpt.save(i + 1, state, force=True)
  ckpt.close()


@pytest.mark.parametrize('mesh_name', sorted(MESHES))
def test_plain_optax_states_build(mesh_name):
  """The reported case (optax.adafactor under FSDP) and other optax states: abstract only."""
  for tx in (optax.adafactor(1e-3), optax.adafactor(1e-3, momentum=0.9),
             optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, mask=lambda p: {
                 k: k != 'norm' for k in p})), optax.lion(1e-3), optax.sgd(1e-3, 0.9)):
    _, psh, shardings = _setup(tx, mesh_name)
    opt_abstract = jax.eval_shape(tx.init, SHAPES)
    _check_follows_params(shardings.opt_state, opt_abstract, psh)
    step_lib.abstract_state(tx, SHAPES, shardings)


def test_fit_pspec_keeps_the_mesh_axes_of_kept_dims():
  mesh = sharding.make_mesh({'fsdp': 4, 'tensor': 2})
  pspec = P('fsdp', 'tensor')
  assert sharding.fit_pspec((128, 256), (128, 256), pspec, mesh) == pspec
  assert sharding.fit_pspec((128,), (128, 256), pspec, mesh) == P('fsdp')     # v_row
  assert sharding.fit_pspec((256,), (128, 256), pspec, mesh) == P('tensor')   # v_col
  assert sharding.fit_pspec((1,), (128, 256), pspec, mesh) == P(None)         # placeholder
  # scanned (layers, embed, mlp): the statistics keep 'layers' unsharded and embed / mlp
  assert sharding.fit_pspec((2, 256), (2, 128, 256), P(None, 'fsdp', 'tensor'), mesh) == \
      P(None, 'tensor')
  # a kept dim that its mesh axes do not divide is replicated
  assert sharding.fit_pspec((6,), (6, 8), P(('fsdp', 'tensor'), None), mesh) == P(None)
