"""Compiling for a TPU slice on this host with libtpu: the train step, the clone, the errors.

The compiles are real TPU compiles (v5e:2x2, abstract devices) of tiny models.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from configs import lm, pods
from hyperinit import models
from hyperinit.train import aot, aot_jobs, roofline, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_lm(**mesh):
  cfg = lm.get_config('tiny')
  cfg.data.seq_len, cfg.batch_size = 32, 8
  cfg.model.scan_layers, cfg.model.remat = True, 'full'
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
  cfg.mesh.update(mesh)
  return cfg


def test_train_and_eval_steps_compile_for_v5e_2x2_with_the_report_fields():
  r = aot.compile_train(_tiny_lm(), 'v5e:2x2')
  assert (r['topology'], r['chip'], r['chips']) == ('v5e:2x2', 'v5e', 4)
  assert r['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 1}
  model_cfg = models.get_config('gpt2-tiny', scan_layers=True, remat='full')
  assert r['params'] == models.count_params(model_cfg)
  m = r['memory']
  assert r['per_device_bytes'] == m['arguments'] + m['temps'] + m['outputs'] - m['aliased'] > 0
  # the step donates the state: its outputs alias its arguments
  assert m['aliased'] > 0
  assert r['hbm_bytes'] == 16 * 2**30 and r['headroom'] == roofline.HEADROOM
  assert r['fits'] is True and r['eval']['fits'] is True
  assert r['plan']['per_device_batch'] == 2 and r['plan']['batch_size'] == 8
  assert r['flops_per_step'] == tasks.flops_per_token(model_cfg, 32) * 8 * 32
  assert r['largest_buffers'] and all(b['bytes'] > 0 for b in r['largest_buffers'])
  # FSDP over 4 chips: the sharded params are gathered / gradients reduced on ICI
  assert set(r['collectives']) == set(roofline.KINDS)
  assert sum(c['ici_bytes'] for c in r['collectives'].values()) > 0
  est = r['roofline']
  assert est['label'].startswith('ESTIMATE') and 0 < est['mfu'] <= 1
  assert est['step_time_s'] == max(est['compute_s'], est['hbm_s'], est['ici_s'])
  assert 'fits (<= 90% of HBM): True' in aot.summary(r)


def test_clone_compiles_sharded_without_gathering_a_destination_leaf():
  cfg = pods.get_config('clone-pythia')
  cfg.clone.source.name = 'pythia-tiny'
  r = aot_jobs.compile_clone(cfg, 'v5e:2x2')
  dst_cfg = models.get_config('pythia-tiny', embed_dim=128, mlp_dim=512, head_dim=32,
                              rope_tile=2)
  assert r['params'] == models.count_params(dst_cfg)
  assert r['dst_model']['embed_dim'] == 128 and r['dst_model']['d_head'] == 32
  assert r['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 1} and r['fits']
  assert r['no_full_gather'] is True
  assert r['largest_hlo_array']['elements'] <= r['largest_dst_shard_elements']
  # each device writes about a quarter of the fp32 destination, never all of it
  assert r['memory']['outputs'] < 4 * r['params'] / 2


def test_bad_input_is_one_clear_error():
  with pytest.raises(ValueError, match=r"unknown topology 'v9z:2x2'.*v5e:2x2"):
    aot.topology('v9z:2x2')
  with pytest.raises(ValueError, match=r'needs 3 devices, have 4'):
    aot.compile_train(_tiny_lm(fsdp=3), 'v5e:2x2')
  cfg = _tiny_lm()
  cfg.batch_size = 6
  with pytest.raises(ValueError, match=r'batch_size=6 must be divisible by the batch sharding '
                     r'\(4 ways\)'):
    aot.compile_train(cfg, 'v5e:2x2')


def test_without_libtpu_it_says_how_to_install_it(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'libtpu' else real(name, *a))
  with pytest.raises(aot.MissingLibtpu, match=r"pip install -e '\.\[tpu\]'"):
    aot.topology('v5e:2x2')


def test_cli_unknown_topology_is_one_line_and_exit_1():
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  p = subprocess.run([sys.executable, '-m', 'experiments.compile', '--config=configs/lm.py:tiny',
                      '--topology=v5e-16'], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 1
  lines = [l for l in p.stderr.splitlines() if l.startswith('compile: error')]
  assert len(lines) == 1 and "unknown topology 'v5e-16'" in lines[0], p.stderr[-2000:]
  assert 'Traceback' not in p.stderr


HLO = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %c = s32[]{:T(128)} constant(5)
  %g = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%g, %c), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %ag = f32[8]{0} all-gather(%x), channel_id=1, replica_groups=[1,4]<=[4], dimensions={0}
  ROOT %t = (s32[], f32[8]) tuple(%i, %ag)
}

ENTRY %main (a: f32[2]) -> f32[16] {
  %w = (s32[], f32[8]) while(%t0), condition=%cond, body=%body
  %ar = f32[16]{0} all-reduce(%y), channel_id=2, replica_groups={{0,1},{2,3}}, to_apply=%add
  %ar.again = f32[16]{0} all-reduce(%y), channel_id=2, replica_groups={{0,1},{2,3}}
  %rs = bf16[4]{0} reduce-scatter(%z), channel_id=3, replica_groups=mesh['x'=4] {'x'}
}
"""


def test_hlo_collectives_count_loop_trips_once_per_channel():
  c = roofline.collectives(HLO, 4)
  # the all-gather runs in a 5-trip while body: 5 x 32 bytes, 3/4 of it sent per device
  assert c['all-gather'] == dict(count=1, executed=5, bytes=160.0, ici_bytes=120.0)
  # one collective (channel 2) written twice is counted once; groups of 2: half sent, x2
  assert c['all-reduce'] == dict(count=1, executed=1, bytes=64.0, ici_bytes=64.0)
  # reduce-scatter: the input is 4 x the 8-byte result
  assert c['reduce-scatter']['bytes'] == 32.0 and c['reduce-scatter']['ici_bytes'] == 24.0
  assert c['all-to-all']['count'] == 0
  assert roofline.largest_array(HLO) == (16, 'f32[16]')


def test_roofline_estimate_takes_the_slowest_bound():
  chip = roofline.chip('v5e')
  est = roofline.estimate(chip, flops_per_device=chip.peak_flops, hbm_traffic_bytes=0,
                          ici_bytes_per_device=2 * chip.ici_bandwidth)
  assert est['bound'] == 'ici' and est['step_time_s'] == 2.0 and est['mfu'] == 0.5
  with pytest.raises(ValueError, match='unknown TPU generation'):
    roofline.chip('v3')
