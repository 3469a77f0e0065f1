r"""Compiles a training config's jobs for a TPU slice from this host (libtpu; no TPU needed).

  python -m experiments.compile --config=configs/lm.py:gpt2 --topology=v5e:2x2 \
      --config.batch_size=16 --json_out=/tmp/gpt2.json
  python -m experiments.compile --config=configs/pods.py:llama2-7b --topology=v5e:8x8 --plan
  python -m experiments.compile --config=configs/pods.py:clone-pythia --topology=v5e:4x4 \
      --job=clone

Prints (and with --json_out writes) per-device memory, whether it fits the chip's HBM,
the biggest buffers, FLOPs per step, the collectives and a roofline ESTIMATE of step time
and MFU.  Exit status: 0 fits; 1 bad input or no libtpu; 2 does not fit (one line names
the biggest buffers and what to change).  See docs/pods.md.
"""

import json
import os
import sys

# The TPU compiler needs no TPU: keep jax's runtime on the CPU (no TPU backend probe).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import app, flags

from experiments import _errors

_CONFIG = _errors.define_config_file(None, 'Training config file[:variant] (as for '
                                     'experiments.train).', lock_config=True)
_TOPOLOGY = flags.DEFINE_string('topology', None, 'TPU slice, e.g. v5e:2x2, v5e:4x4, v5e:16x16, '
                                'v5p:2x2x4, v6e:4x4.')
_JOB = flags.DEFINE_enum('job', 'train', ['train', 'clone'], 'What to compile: the train '
                         '(+ eval) step, or the sharded clone of config.clone.source '
                         '(configs/pods.py:clone-*).')
_JSON = flags.DEFINE_string('json_out', None, 'Write the report (or the plan) here as JSON.')
_PLAN = flags.DEFINE_bool('plan', False, 'Compile up to 8 layouts (mesh, remat, per-device '
                          'batch, grad_accum); list those that fit, best estimated MFU first.')
_EVAL = flags.DEFINE_bool('eval_step', True, 'Also compile the eval step (--job=train).')


def _write(obj):
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(obj, f, indent=1, default=str)


def main(argv):
  del argv
  if not _CONFIG.value or not _TOPOLOGY.value:
    raise app.UsageError('--config and --topology are required')
  with _errors.user_errors('compile'):
    from hyperinit.train import aot, aot_jobs, plan  # pylint: disable=g-import-not-at-top
    if _PLAN.value:
      results = plan.search(_CONFIG.value, _TOPOLOGY.value)
      _write(results)
      fits = [r for r in results if r['fits']]
      print(f'{len(fits)} of {len(results)} candidates fit, best estimated MFU first:')
      for r in fits:
        print(f"  {r['candidate']}: {r['per_device_gib']} GiB/device, MFU estimate "
              f"{r['roofline']['mfu']:.2f}")
      sys.exit(0 if fits else 2)
    try:
      if _JOB.value == 'train':
        report = aot.compile_train(_CONFIG.value, _TOPOLOGY.value, eval_step=_EVAL.value)
      else:
        report = aot_jobs.compile_clone(_CONFIG.value, _TOPOLOGY.value)
    except aot.DoesNotFit as e:
      _write(dict(e.report, error=str(e)))
      sys.stderr.write(f'compile: does not fit: {e}\n')
      sys.exit(2)
    print(aot.summary(report))
    _write(report)
    if not report['fits']:
      big = ', '.join(f"{b['shape']} ({b['bytes'] / 2**30:.2f} GiB)"
                      for b in report['largest_buffers'][:3])
      sys.stderr.write(f"compile: does not fit: {report['per_device_gib']} GiB per device "
                       f"exceeds {1 - report['headroom']:.0%} of "
                       f"{report['hbm_bytes'] / 2**30:.0f} GiB HBM; biggest buffers: {big}; "
                       f"{aot.advice(report['job'])}\n")
      sys.exit(2)
    if report.get('no_full_gather') is False:
      sys.exit('compile: the clone materialises an array larger than any destination shard: '
               f"{report['largest_hlo_array']}")


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
