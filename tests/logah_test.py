"""LoGAH: graphs, batching, predicted trees of every preset, samplers, the meta-step, saving.

Decoder, spectrum and normalisation tests: tests/logah_decoders_test.py."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperinit import checkpoint, models, spec
from hyperinit.logah import batching, ghn as ghn_lib, meta, noise as noise_lib, samplers
from hyperinit.logah.graph import OP_ID, build_graph, check_leaf_mapping, shortest_paths, size_bin

# A small GHN for everything that really runs (compiles in seconds on CPU).
SMALL = ghn_lib.GHNConfig(hidden=16, layers=1, heads=2, rank=4, max_dim=512, chunk=16)


@pytest.fixture(scope='module')
def small_params():
  return ghn_lib.init(SMALL, jax.random.key(0))


# --- graphs ------------------------------------------------------------------------

def test_gpt2_two_layer_graph_by_hand():
  # input -> token_embed, input -> pos_embed, (token_embed, pos_embed) -> embed_sum: 4 nodes, 4 edges.
  # Each block, 12 nodes: attn_norm, query, key, value, msa, out, sum_attn, mlp_norm, wi, act,
  #   wo, sum_mlp; 16 edges: x->attn_norm, attn_norm->{q,k,v} (3), {q,k,v}->msa (3), msa->out,
  #   {x,out}->sum_attn (2), sum_attn->mlp_norm, mlp_norm->wi, wi->act, act->wo, {sum_attn,wo}->sum_mlp (2).
  # Head: final_norm, tied readout: 2 nodes, 2 edges.  Total 4 + 2*12 + 2 = 30 nodes, 4 + 2*16 + 2 = 38 edges.
  g = build_graph(models.get_config('gpt2-tiny'))
  assert (g.num_nodes, g.num_edges) == (30, 38)
  ops = collections.Counter(g.ops.tolist())
  assert ops[OP_ID['linear']] == 2 * 6 and ops[OP_ID['msa']] == 2 and ops[OP_ID['sum']] == 1 + 2 * 2
  assert ops[OP_ID['layernorm']] == 2 * 2 + 1 and ops[OP_ID['readout_tied']] == 1
  msa = g.index('block_1/attn/msa')
  preds = sorted(g.names[s] for s, r in zip(g.senders, g.receivers) if r == msa)
  assert preds == ['block_1/attn/key', 'block_1/attn/query', 'block_1/attn/value']
  # Shape features: (c_out, c_in, k) of the query kernel (64 -> 4 heads x 16) and the MLP.
  assert tuple(g.shapes[g.index('block_0/attn/query')]) == (64, 64, 4)
  assert tuple(g.shapes[g.index('block_0/mlp/wi')]) == (256, 64, 0)
  assert tuple(g.shapes[g.index('token_embed')]) == (64, 256, 0)


def test_vit_two_layer_graph_by_hand():
  # input -> patch_embed, input -> cls_token, (cls, patches) -> concat, input -> pos_embed,
  # (concat, pos_embed) -> embed_sum: 6 nodes, 7 edges.  Blocks as GPT-2: 2 x (12 nodes, 16 edges).
  # Head: final_norm, pool, head: 3 nodes, 3 edges.  Total 33 nodes, 42 edges.
  g = build_graph(models.get_config('vit-tiny'))
  assert (g.num_nodes, g.num_edges) == (33, 42)
  assert tuple(g.shapes[g.index('patch_embed')]) == (64, 4 * 4 * 3, 4)  # k = patch size
  assert g.ops[g.index('pool')] == OP_ID['pool_cls']


@pytest.mark.parametrize('name,nodes,edges', [
    # Llama: no learned positions (input, token_embed; 1 edge); a block adds rope_q, rope_k
    # (+2 nodes, +2 edges) and the gate multiply (+1 node; act->mul, wi->mul, mul->wo replace
    # act->wo: +2 edges): 15 nodes, 20 edges; untied head: final_norm, lm_head (2, 2).
    ('llama-gqa-tiny', 2 + 2 * 15 + 2, 1 + 2 * 20 + 2),
    # Pythia: rope (+2, +2), parallel residual: one 3-input sum and mlp_norm fed by x
    # (12 - 1 + 2 = 13 nodes; 16 - 1 + 2 = 17 edges), untied head.
    ('pythia-tiny', 2 + 2 * 13 + 2, 1 + 2 * 17 + 2),
    # OLMo: as Llama with a non-parametric norm, tied readout.
    ('olmo-tiny', 2 + 2 * 15 + 2, 1 + 2 * 20 + 2),
    ('gpt2-large', 4 + 36 * 12 + 2, 4 + 36 * 16 + 2),
])
def test_graph_counts_follow_the_config(name, nodes, edges):
  g = build_graph(models.get_config(name))
  assert (g.num_nodes, g.num_edges) == (nodes, edges)
  assert np.all(g.senders < g.receivers)  # topological order


def _bfs(n, senders, receivers):
  adj = collections.defaultdict(list)
  for s, r in zip(senders, receivers):
    adj[int(s)].append(int(r))
  out = np.full((n, n), -1)
  for src in range(n):
    out[src, src] = 0
    queue = collections.deque([src])
    while queue:
      u = queue.popleft()
      for v in adj[u]:
        if out[src, v] < 0:
          out[src, v] = out[src, u] + 1
          queue.append(v)
  return out


@pytest.mark.parametrize('name', ['gpt2-tiny', 'pythia-tiny', 'vit-tiny'])
def test_shortest_paths_match_bfs(name):
  g = build_graph(models.get_config(name))
  np.testing.assert_array_equal(g.spd, _bfs(g.num_nodes, g.senders, g.receivers))
  # A DAG: never reachable both ways between distinct nodes.
  both = (g.spd > 0) & (g.spd.T > 0)
  assert not both.any()


def test_shortest_paths_reject_non_topological_edges():
  with pytest.raises(ValueError, match='topological'):
    shortest_paths(3, np.array([0, 2]), np.array([1, 1]))


def test_size_bins_cover_wide_models():
  sizes = np.array([0, 1, 64, 1280, 5120, 6400, 50257])
  bins = size_bin(sizes)
  assert bins[0] == 0 and len(set(bins.tolist())) == len(sizes)
  assert size_bin(5120) != size_bin(6400)


def test_sizes_and_distances_are_embedded_smoothly():
  """SmoothEmbed: fixed sinusoids of the code (periods 8 * 2^i) through a learned linear map,
  so a code no pool member has (a wider target's size bin, a deeper target's distance) is
  embedded next to its neighbours instead of at an untrained random table row."""
  from hyperinit.logah.encoder import SmoothEmbed  # pylint: disable=g-import-not-at-top
  emb = SmoothEmbed(32)
  codes = jnp.arange(80)
  params = emb.init(jax.random.key(0), codes)
  assert jax.tree.map(jnp.shape, params) == {'params': {'proj': {'kernel': (16, 32)}}}
  e = np.asarray(emb.apply(params, codes))
  # Closed form of one row: [sin(2 pi c / p), cos(2 pi c / p)] @ kernel.
  p = 8.0 * 2.0 ** np.arange(8)
  f = np.concatenate([np.sin(2 * np.pi * 37 / p), np.cos(2 * np.pi * 37 / p)])
  np.testing.assert_allclose(e[37], f @ np.asarray(params['params']['proj']['kernel']),
                             rtol=1e-4, atol=1e-6)
  step = np.linalg.norm(np.diff(e, axis=0), axis=1)
  far = np.linalg.norm(e[:, None] - e[None], axis=-1)
  assert step.max() < 0.5 * np.median(far)      # neighbours close, the range spread out
  # Coordinates start at the tables' scale (std features^-0.5).
  assert np.std(e) == pytest.approx(32 ** -0.5, rel=0.3)


# --- every preset: leaf mapping and predicted tree, without allocating -------------

GHN_SHAPES = {}


def _ghn_shapes(cfg):
  if cfg not in GHN_SHAPES:
    GHN_SHAPES[cfg] = ghn_lib.param_shapes(cfg)
  return GHN_SHAPES[cfg]


def _decode(cfg, params, target):
  """The jittable prediction (predict is eager only)."""
  return ghn_lib.decode_params(cfg, params, ghn_lib.target_codes(cfg, params, target), target)


@pytest.mark.parametrize('name', models.preset_names())
def test_every_preset_maps_every_leaf_once_and_predicts_its_tree(name):
  target = models.get_config(name)
  specs, shapes = models.param_specs(target), models.param_shapes(target)
  check_leaf_mapping(build_graph(target), specs, shapes)
  cfg = ghn_lib.GHNConfig()  # the 2.5M LoGAH: hidden 64, r 32, K 32768
  out = jax.eval_shape(lambda p: _decode(cfg, p, target), _ghn_shapes(cfg))
  assert jax.tree.structure(out) == jax.tree.structure(shapes)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(shapes)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype)


@pytest.mark.parametrize('name', ['gpt2-tiny', 'llama-gqa-tiny', 'vit-tiny', 'gpt2-large'])
def test_scanned_layouts(name):
  target = models.get_config(name, scan_layers=True)
  shapes = models.param_shapes(target)
  check_leaf_mapping(build_graph(target), models.param_specs(target), shapes)
  cfg = ghn_lib.GHNConfig(decoder='ghn3')
  out = jax.eval_shape(lambda p: _decode(cfg, p, target), _ghn_shapes(cfg))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), out) == \
      jax.tree.map(lambda x: (x.shape, x.dtype), shapes)


def test_mapping_check_names_the_missing_leaf():
  target = models.get_config('gpt2-tiny')
  g = build_graph(target)
  specs = models.param_specs(target)
  shapes = jax.tree.map(lambda x: x, models.param_shapes(target))
  shapes['extra'] = {'kernel': jax.ShapeDtypeStruct((3, 3), jnp.float32)}
  specs = dict(specs, extra={'kernel': spec.ParamSpec(('embed', 'embed'), (0,))})
  with pytest.raises(ValueError, match='extra/kernel'):
    check_leaf_mapping(g, specs, shapes)


# --- batching ----------------------------------------------------------------------

def test_batches_in_one_bucket_have_one_shape_and_dense_view_is_exact():
  a = [build_graph(models.get_config(n)) for n in ('gpt2-tiny', 'vit-tiny')]
  b = [build_graph(models.get_config(n)) for n in ('llama-gqa-tiny', 'pythia-tiny')]
  bucket = batching.Bucket(num_graphs=3, max_nodes=64)
  ba, bb = batching.batch_graphs(a, bucket), batching.batch_graphs(b, bucket)
  assert jax.tree.map(np.shape, ba) == jax.tree.map(np.shape, bb)
  feat, mask, in_deg, out_deg, spd = jax.jit(batching.to_dense)(ba)
  assert feat.shape == (4, 64, 5) and spd.shape == (4, 64, 64)
  for i, g in enumerate(a):
    n = g.num_nodes
    np.testing.assert_array_equal(feat[i, :n], g.features)
    np.testing.assert_array_equal(mask[i], np.arange(64) < n)
    np.testing.assert_array_equal(in_deg[i, :n], g.in_degree())
    np.testing.assert_array_equal(out_deg[i, :n], g.out_degree())
    np.testing.assert_array_equal(spd[i, :n, :n], g.spd)
  assert not mask[2:].any()  # the empty slot and the padding graph
  with pytest.raises(ValueError, match='does not fit'):
    batching.batch_graphs([build_graph(models.get_config('gpt2', num_layers=6))], bucket)


# --- GHN config and optimizer ---------------------------------------------------------

def test_meta_optimizer_is_plain_optax_and_the_trainers_schedule(small_params):
  """The GHN's optimizer is optax's clip + adamw (no muP), bit for bit over 3 clipped steps,
  and its schedule is the trainer's (`train.optim.make_schedule`, lr 0 at update 0)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from hyperinit.train import optim  # pylint: disable=g-import-not-at-top
  mc = meta.MetaConfig(lr=1e-2, clip=0.5, warmup_steps=2, total_steps=10, end_lr_frac=0.1)
  trainer = optim.make_schedule(ml_collections.ConfigDict(dict(
      schedule='cosine', learning_rate=mc.lr, warmup_steps=mc.warmup_steps, min_lr_ratio=0.1)),
      mc.total_steps)
  sched = meta.make_schedule(mc)
  np.testing.assert_array_equal([sched(i) for i in range(12)], [trainer(i) for i in range(12)])
  assert float(sched(0)) == 0.0 and float(sched(2)) == pytest.approx(mc.lr)
  ours = meta.make_optimizer(mc)
  ref = optax.chain(optax.clip_by_global_norm(mc.clip),
                    optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10, 1e-3),
                                weight_decay=mc.weight_decay))
  p_a = p_b = small_params
  s_a, s_b = ours.init(p_a), ref.init(p_b)
  for k in range(3):
    g = jax.tree.map(lambda x, k=k: jnp.sin(x * (k + 2.0)) * 10.0, p_a)
    u_a, s_a = ours.update(g, s_a, p_a)
    u_b, s_b = ref.update(g, s_b, p_b)
    jax.tree.map(np.testing.assert_array_equal, u_a, u_b)
    p_a, p_b = optax.apply_updates(p_a, u_a), optax.apply_updates(p_b, u_b)


def test_predict_is_eager_and_decode_params_is_jittable(small_params):
  """Two entry points, no sniffing: predict streams eagerly and refuses tracing; decode_params
  (with target_codes) is the jittable one, with the same numbers."""
  target = models.get_config('gpt2-tiny')
  eager = ghn_lib.predict(SMALL, small_params, target)
  jitted = jax.jit(lambda p: _decode(SMALL, p, target))(small_params)
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(jax.errors.TracerArrayConversionError):
    jax.jit(lambda p: ghn_lib.predict(SMALL, p, target))(small_params)


def test_bad_ghn_configs_raise():
  with pytest.raises(ValueError, match='decoder'):
    ghn_lib.GHNConfig(decoder='ghn2')
  with pytest.raises(ValueError, match='normalize'):
    ghn_lib.GHNConfig(normalize='batch')
  with pytest.raises(ValueError, match='unknown GHNConfig fields'):
    ghn_lib.GHNConfig.from_dict({'hiden': 3})

# --- samplers ----------------------------------------------------------------------

def test_samplers_are_seeded_and_respect_the_ranges():
  a = samplers.sample_configs('vits1k', 200, seed=3)
  assert a == samplers.sample_configs('vits1k', 200, seed=3)
  assert a != samplers.sample_configs('vits1k', 200, seed=4)
  for c in a:
    assert 3 <= c.num_layers <= 9 and 128 <= c.embed_dim <= 512 and c.embed_dim % 32 == 0
    assert c.num_heads in (3, 4, 6, 8, 12) and c.embed_dim % c.num_heads == 0
    assert (c.image_size, c.num_channels, c.num_classes) == (8, 1, 10)
  g = samplers.sample_configs('gpts1k', 200, seed=0)
  for c in g:
    assert 3 <= c.num_layers <= 9 and 72 <= c.embed_dim <= 256 and c.num_heads == 8
    assert c.vocab_size == 256 and samplers.num_params(c) < 50_000_000
  assert {c.num_layers for c in g} == set(range(3, 10))
  for c in a[:2] + g[:2] + samplers.sample_configs('gpt-cpu', 2, seed=0):
    assert samplers.num_params(c) == models.count_params(c)
  with pytest.raises(ValueError, match='unknown pool'):
    samplers.sample_configs('resnets', 1, seed=0)


def test_meta_batches_share_a_bucket():
  pool = samplers.sample_configs('gpt-cpu', 16, seed=0, unique=True)
  groups = samplers.meta_batches(pool, 4, seed=0)
  assert len(groups) == 4
  assert {c for g in groups for c in g} == set(pool)
  for grp in groups:
    sizes = [build_graph(c).num_nodes for c in grp]
    assert max(sizes) - min(sizes) <= 24


# --- meta-training step --------------------------------------------------------------

def test_meta_step_reaches_every_ghn_parameter_and_learns():
  # A mixed meta-batch (a 1-layer GPT and a 1-layer ViT) so every op kind and decoder head is used.
  targets = (models.get_config('gpt2-tiny', num_layers=1, embed_dim=32, mlp_dim=64, max_len=16),
             models.get_config('vit-tiny', num_layers=1, embed_dim=32, mlp_dim=64, image_size=8,
                               patch_size=4, num_channels=1))
  rng = np.random.default_rng(0)
  batch = {'tokens': jnp.asarray(rng.integers(0, 256, (4, 17)), jnp.int32),
           'image': jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 10, (4,)), jnp.int32)}
  # No weight decay: with AdamW a leaf moves on the first step iff its gradient is non-zero.
  mc = meta.MetaConfig(lr=3e-3, warmup_steps=1, total_steps=20, weight_decay=0.0, ema=0.9)
  state = meta.init_state(SMALL, mc, jax.random.key(0))
  before = jax.tree.map(np.array, state['params'])  # copies: the step donates its input
  graphs = meta.batch_for(targets)
  state, m0 = meta.meta_step(state, graphs, batch, ghn_cfg=SMALL, meta_cfg=mc, targets=targets)
  # The trainer's schedule convention: update 0 has lr 0, so the first step moves nothing.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state['params']), before)
  state, _ = meta.meta_step(state, graphs, batch, ghn_cfg=SMALL, meta_cfg=mc, targets=targets)
  after = spec.flatten(state['params'])
  frozen = [k for k, v in spec.flatten(before).items() if np.array_equal(v, after[k])]
  assert not frozen, f'no gradient reached {frozen}'
  np.testing.assert_allclose(  # EMA (at the initial params after update 0): 0.9 old + 0.1 new
      spec.flatten(state['ema'])['encoder/op_embed/embedding'],
      0.9 * spec.flatten(before)['encoder/op_embed/embedding']
      + 0.1 * after['encoder/op_embed/embedding'], rtol=1e-5, atol=1e-7)
  assert int(state['step']) == 2 and np.isfinite(float(m0['loss']))
  for _ in range(11):
    state, m = meta.meta_step(state, graphs, batch, ghn_cfg=SMALL, meta_cfg=mc, targets=targets)
  # It fits a fixed batch: the ViT's loss drops from ~ln 10 (measured: 2.30 -> 1.97).  The LM
  # barely moves: random tokens and 0.02-std weights keep its logits near uniform.
  assert float(m['task_losses'][1]) < float(m0['task_losses'][1]) - 0.15
  assert float(m['task_loss']) < float(m0['task_loss'])



def test_meta_noise_is_fresh_per_key_and_off_at_zero(small_params):
  """MetaConfig.noise: the task loss is that of predicted + noise.add_noise(frac) drawn from
  the step's key (deterministic per key, different across keys); noise 0 ignores the key,
  and noise without a key is refused."""
  target = models.get_config('gpt2-tiny', num_layers=1, embed_dim=32, mlp_dim=64, max_len=16)
  batch = {'tokens': jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 17)), jnp.int32)}
  graphs = meta.batch_for((target,))
  loss = lambda noise, key: float(meta.meta_loss(small_params, graphs, batch, ghn_cfg=SMALL,
                                                 targets=(target,), l2=0.0, noise=noise,
                                                 rng=key)[1]['task_loss'])
  clean = loss(0.0, None)
  assert loss(0.0, jax.random.key(1)) == clean
  a, b = loss(1.0, jax.random.key(1)), loss(1.0, jax.random.key(2))
  assert a == loss(1.0, jax.random.key(1)) and a != b and a != clean
  # The same draw as noise.add_noise on the decoded prediction (target 0 uses fold_in(key, 0)).
  codes = jax.tree.map(lambda c: c[0], ghn_lib.node_codes(SMALL, small_params, graphs))
  pred = ghn_lib.decode_params(SMALL, small_params, codes, target)
  noisy = noise_lib.add_noise(pred, target, 1.0, jax.random.fold_in(jax.random.key(1), 0))
  assert float(meta.task_loss(target, noisy, batch)[0]) == pytest.approx(a, rel=1e-5)
  with pytest.raises(ValueError, match='needs an rng'):
    loss(0.5, None)

# --- saving --------------------------------------------------------------------------

def test_save_and_load_round_trip(small_params, tmp_path):
  from hyperinit.logah import saving  # pylint: disable=g-import-not-at-top
  saving.save_ghn(str(tmp_path / 'ghn'), SMALL, small_params)
  cfg, params = saving.load_ghn(str(tmp_path / 'ghn'))
  assert cfg == SMALL
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(small_params)):
    np.testing.assert_array_equal(a, b)
  target = models.get_config('gpt2-tiny')
  predicted = ghn_lib.predict(cfg, params, target)
  checkpoint.save_model(str(tmp_path / 'pred'), target, predicted)
  back, back_cfg = checkpoint.load_params(str(tmp_path / 'pred'))
  assert back_cfg == target
  np.testing.assert_array_equal(back['block_1']['mlp']['wo']['kernel'],
                                predicted['block_1']['mlp']['wo']['kernel'])
  with pytest.raises(FileNotFoundError, match='not a saved GHN'):
    saving.load_ghn(str(tmp_path))
