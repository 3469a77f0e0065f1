"""Issue 26 items 1, 6, 9 (clone): nothing of the source is lost, nothing runs away, one line.

Faults injected as the issue found them: `clone --overwrite` with a --dst that is the
checkpoint directory actually loaded, a sub-directory of the source run, a fake step
directory, typed differently from --src (relative, `..`, trailing slash) and through
symlinks; `--factor=1e9`; missing flags; a --dst that is a read-only mount point.
"""

import hashlib
import os
import types

import jax
import pytest
from absl import flags

from experiments import clone as clone_main
from hyperinit import checkpoint, errors, models
from hyperinit.cloning import widen
from hyperinit.train import destinations, memory

CFG = models.get_config('gpt2-tiny', num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
                        vocab_size=64, max_len=16)


def run_cli(*args):
  """experiments/clone.py's main, in-process, with these flags."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['clone', *args])
  clone_main.main([])


def _digest(root):
  return {os.path.relpath(os.path.join(d, f), root):
          hashlib.sha1(open(os.path.join(d, f), 'rb').read()).hexdigest()
          for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture
def run(tmp_path):
  """A source run R (R/checkpoints/0: params + meta in the trainer's checkpoint layout)."""
  r = tmp_path / 'R'
  checkpoint.save_model(str(r / 'checkpoints'), CFG, models.init_params(CFG, jax.random.key(0)))
  (r / 'metrics.jsonl').write_text('{"step": 0}\n')
  return r


# (--src, --dst) relative to tmp_path, the forms the issue found accepted and more
OVERLAPS = [
    ('R', 'R/checkpoints'),                # the checkpoint dir actually loaded
    ('R', 'R/sub'),                        # writes into the source run
    ('R', 'R/checkpoints/300'),            # a fake step the next training run sets aside
    ('R', 'R/checkpoints/0'),              # the step loaded
    ('R/checkpoints', 'R'),                # the run that holds the checkpoints given
    ('R/checkpoints/0', 'R/checkpoints'),  # a step dir as --src
    ('R/checkpoints/0', 'R/other'),        # ... and its run
    ('R/', './R/checkpoints/'),            # typed differently
    ('R/../R', 'R/checkpoints'),
    ('R', '.'),                            # contains the run
]


@pytest.mark.parametrize('src, dst', OVERLAPS)
def test_overwrite_never_touches_the_source(run, tmp_path, monkeypatch, src, dst):
  monkeypatch.chdir(tmp_path)
  before = _digest(run)
  with pytest.raises(SystemExit, match=r"--dst .* (is|is inside|contains) the (source run|"
                     r"checkpoint root|checkpoint step|source) .* pick a --dst outside"):
    run_cli(f'--src={src}', f'--dst={dst}', '--factor=2', '--overwrite')
  assert _digest(run) == before
  assert not (run / 'sub').exists() and not (run / 'other').exists()
  assert sorted(os.listdir(tmp_path)) == ['R']   # no temporary directory left beside R


def test_symlinks_are_resolved(run, tmp_path):
  before = _digest(run)
  (tmp_path / 'link_to_run').symlink_to(run)
  (tmp_path / 'link_to_ckpt').symlink_to(run / 'checkpoints')
  for src, dst in ((tmp_path / 'link_to_run', run / 'checkpoints'),
                   (run, tmp_path / 'link_to_run' / 'checkpoints'),
                   (run, tmp_path / 'link_to_ckpt'),
                   (tmp_path / 'link_to_ckpt', tmp_path / 'link_to_run' / 'sub')):
    with pytest.raises(SystemExit, match='pick a --dst outside'):
      run_cli(f'--src={src}', f'--dst={dst}', '--factor=2', '--overwrite')
  assert _digest(run) == before


def test_a_destination_beside_the_source_is_written(run, tmp_path):
  run_cli(f'--src={run}', f'--dst={tmp_path / "big"}', '--factor=2', '--check=false')
  params, cfg = checkpoint.load_params(str(tmp_path / 'big'))
  assert cfg.embed_dim == 64
  # the memory plan is sized from exactly these shapes
  assert memory.tree_bytes(models.param_shapes(cfg)) == memory.tree_bytes(params)


def test_source_roots_name_run_root_and_step(run):
  roots = destinations.source_roots(str(run / 'checkpoints' / '0'))
  assert roots == {'source run': str(run), 'checkpoint root': str(run / 'checkpoints'),
                   'checkpoint step': str(run / 'checkpoints' / '0')}
  assert destinations.source_roots(str(run / 'checkpoints' / '.')) == {
      'source run': str(run), 'checkpoint root': str(run / 'checkpoints')}


def _never_clone(monkeypatch):
  def fail(*a, **k):
    raise AssertionError('the clone was executed: its memory was not checked first')
  monkeypatch.setattr(widen, 'clone_fn', fail)


def test_factor_1e9_is_refused_before_allocating(run, tmp_path, monkeypatch):
  _never_clone(monkeypatch)
  with pytest.raises(SystemExit, match=r'clone: error: cloning [\d,]+ -> [\d,]+ params needs '
                     r'about [\d,.e+]+ GB of memory, more than the .* GB available on this host'):
    run_cli(f'--src={run}', f'--dst={tmp_path / "huge"}', '--factor=1e9')
  assert not (tmp_path / 'huge').exists()


def test_max_memory_gb_limits_and_zero_disables(run, tmp_path, monkeypatch):
  _never_clone(monkeypatch)
  with pytest.raises(SystemExit, match=r'more than the 1e-06 GB --max_memory_gb=1e-06'):
    run_cli(f'--src={run}', f'--dst={tmp_path / "d"}', '--factor=2', '--max_memory_gb=1e-6')
  with pytest.raises(AssertionError, match='the clone was executed'):   # 0: no check
    run_cli(f'--src={run}', f'--dst={tmp_path / "d"}', '--factor=2', '--max_memory_gb=0')


@pytest.mark.parametrize('args, match', [
    ((), r'--src and --dst required'),
    (('--src=x',), r'--dst required'),
])
def test_missing_flags_are_one_line(args, match):
  with pytest.raises(SystemExit, match=f'^clone: error: {match}.*') as e:
    run_cli(*args)
  assert '\n' not in str(e.value.code)


def _fake_statvfs(monkeypatch, read_only: str):
  real = os.statvfs

  def statvfs(path):
    if os.path.realpath(path) == os.path.realpath(read_only):
      return types.SimpleNamespace(f_flag=os.ST_RDONLY)
    return real(path)
  monkeypatch.setattr(os, 'statvfs', statvfs)


def test_a_read_only_mount_point_dst_says_read_only(run, tmp_path, monkeypatch):
  mnt = tmp_path / 'mnt'
  mnt.mkdir()
  real = os.path.ismount
  monkeypatch.setattr(os.path, 'ismount', lambda p: os.path.realpath(p) == str(mnt) or real(p))
  _fake_statvfs(monkeypatch, str(mnt))
  with pytest.raises(SystemExit, match=r"--dst '.*mnt' is a read-only mount point: nothing can "
                     r'be written there'):
    run_cli(f'--src={run}', f'--dst={mnt}', '--factor=2')
  # a writable mount point: the rename into place cannot replace it either
  monkeypatch.undo()
  monkeypatch.setattr(os.path, 'ismount', lambda p: os.path.realpath(p) == str(mnt) or real(p))
  with pytest.raises(SystemExit, match=r'is a mount point: .* name a new directory under it'):
    run_cli(f'--src={run}', f'--dst={mnt}', '--factor=2')


def test_a_dst_on_a_read_only_file_system_is_refused_first(run, tmp_path, monkeypatch):
  ro = tmp_path / 'ro'
  ro.mkdir()
  _fake_statvfs(monkeypatch, str(ro))
  _never_clone(monkeypatch)
  with pytest.raises(SystemExit, match=r"its directory '.*ro' is on a read-only file system"):
    run_cli(f'--src={run}', f'--dst={ro / "new" / "clone"}', '--factor=2')


def test_accelerator_memory_is_checked_when_the_backend_reports_it(monkeypatch):
  gpu = types.SimpleNamespace(platform='gpu', device_kind='Fake GPU', memory_stats=lambda: {
      'bytes_limit': 10**9, 'bytes_in_use': 4 * 10**8})
  monkeypatch.setattr(jax, 'local_devices', lambda: [gpu])
  assert memory.device_free_bytes() == 6 * 10**8
  with pytest.raises(errors.ResourceError, match=r'x needs about 0.7 GB on Fake GPU, which has '
                     r'0.6 GB free'):
    memory.check_fits(10, 'x', None, device_need=7 * 10**8)
  memory.check_fits(10, 'x', None, device_need=5 * 10**8)
  memory.check_fits(10, 'x', 0, device_need=7 * 10**8)   # 0: no check
