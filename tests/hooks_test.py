"""run_loop + hooks on a toy step function: when rows, evals and saves happen; guard; SIGTERM."""

import glob
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperinit import checkpoint
from hyperinit.train import hooks, loop, metrics
from hyperinit.train.step import TrainState


def _state():
  return TrainState(step=jnp.zeros((), jnp.int32), params={'w': jnp.zeros((2,))},
                    opt_state={'m': jnp.zeros((2,))}, rng=jnp.zeros((2,), jnp.uint32))


def _step_fn(nan_at=None, on_step=None):
  def step_fn(state, step):
    loss = jnp.float32(np.nan if step == nan_at else 1.0 / step)
    if on_step is not None:
      on_step(step)
    return state.replace(step=state.step + 1, params={'w': state.params['w'] + 1}), {'loss': loss}
  return step_fn


def _run(workdir, *, total=10, stop=None, nan_at=None, on_step=None, start_state=None, start=0,
         extra=()):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=5, keep=5,
                                 async_save=False)
  guard = hooks.NonFiniteGuard(lambda m: m['loss'], lambda a, b: f'bad in steps {a}..{b}')
  log = hooks.Log(3, ('loss',), 4, 'examples', schedule=lambda s: 0.5, guard=guard)
  ev = hooks.Eval(lambda st: {'w': float(st.params['w'][0])}, 4, at_start=True)
  hook_list = [guard, log, ev, hooks.Checkpoint(ckpt, guard=guard), *extra]
  out = loop.run_loop(start_state or _state(), _step_fn(nan_at, on_step), hook_list, start=start,
                      total=total, stop=stop, workdir=workdir)
  return out, log, ev, ckpt


def _rows(workdir, split):
  return [r for r in metrics.read_jsonl(workdir) if r['split'] == split]


def test_rows_evals_and_saves_at_the_expected_steps(tmp_path):
  out, log, ev, ckpt = _run(str(tmp_path), stop=7)  # a time slice of a 10-step run
  assert (out.step, out.preempted, int(out.state.step)) == (7, False, 7)
  assert [r['step'] for r in _rows(str(tmp_path), 'train')] == [3, 6, 7]
  assert [r['step'] for r in _rows(str(tmp_path), 'eval')] == [0, 4]  # the end is step 10
  assert ckpt.all_steps() == [5, 7]  # the interval, and forced at the slice's last step
  row = _rows(str(tmp_path), 'train')[0]
  assert row['loss'] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3, rel=1e-6)
  assert {'learning_rate', 'steps_per_sec', 'examples_per_sec'} <= set(row)
  assert log.scalars['loss'] == pytest.approx(1 / 7, rel=1e-6) and ev.scalars == {'w': 4.0}
  # resume from step 7: no eval at start, rows of the replayed part are not duplicated
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        _state())
  restored, _ = ckpt.restore(target, 7)
  out, _, ev, ckpt = _run(str(tmp_path), start_state=restored, start=7)
  assert out.step == 10 and float(out.state.params['w'][0]) == 10
  assert [r['step'] for r in _rows(str(tmp_path), 'train')] == [3, 6, 7, 9, 10]
  assert [r['step'] for r in _rows(str(tmp_path), 'eval')] == [0, 4, 8, 10]
  assert ckpt.all_steps() == [5, 7, 10]


def test_guard_stops_before_saving_a_non_finite_state(tmp_path):
  with pytest.raises(FloatingPointError, match=r'bad in steps 4\.\.5'):
    _run(str(tmp_path), nan_at=4)
  ck = checkpoint.Checkpointer(os.path.join(tmp_path, 'checkpoints'), read_only=True)
  assert ck.all_steps() == []  # step 5 was due, but not saved
  assert [r['step'] for r in _rows(str(tmp_path), 'train')] == [3]


def test_sigterm_saves_and_stops_at_that_step(tmp_path):
  def kill_at_4(step):
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)

  out, _, _, ckpt = _run(str(tmp_path), on_step=kill_at_4)
  assert (out.step, out.preempted) == (4, True)
  assert ckpt.all_steps() == [4]
  assert [r['step'] for r in _rows(str(tmp_path), 'train')] == [3, 4]


def test_profile_writes_a_trace_of_the_configured_steps(tmp_path):
  assert hooks.profile_hook(None, str(tmp_path)) == []
  with pytest.raises(ValueError, match='need 0 < first < stop'):
    hooks.Profile(str(tmp_path), 3, 3)
  (prof,) = hooks.profile_hook((2, 4), str(tmp_path))
  _run(str(tmp_path), total=5, extra=[prof])
  assert glob.glob(os.path.join(tmp_path, 'tb', 'plugins', 'profile', '*', '*.xplane.pb'))
