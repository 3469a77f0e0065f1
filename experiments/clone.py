"""Clone a checkpoint n-times wider: our trainer's orbax checkpoints or Hugging Face dirs.

    python -m experiments.clone --src=runs/small --dst=runs/big_init --factor=2
    python -m experiments.clone --src=hf/pythia-70m --dst=hf/pythia-2x --factor=2      # HF -> HF
    python -m experiments.clone --src=runs/small --dst=runs/big --factor=2 --with_opt_state
    python -m experiments.clone --src=hf/llama --dst=out --factor=2 --attention=head_dim \
        --format=orbax       # head_dim growth under RoPE is not a standard HF model

See docs/cloning.md ("CLI") and hyperinit/train/clone_job.py.  Refused before any work,
with one line: a --dst that is, contains or lies inside the source run (by real path), a
mount point or read-only --dst, a non-empty --dst without --overwrite, and a clone that
would not fit in memory (--max_memory_gb).
"""

from absl import app, flags, logging

from experiments import _errors
from hyperinit import _logging, cloning, errors
from hyperinit.train import clone_job, memory

_SRC = flags.DEFINE_string('src', None, 'Trainer workdir / checkpoint dir / step dir, or a '
                           'Hugging Face directory (config.json + safetensors).')
_DST = flags.DEFINE_string('dst', None, 'Output directory (written atomically).')
_FACTOR = flags.DEFINE_float('factor', None, 'Integer factor for all widened axes: embed, mlp '
                             'and --attention.')
_ATTN = flags.DEFINE_enum('attention', 'heads', ['heads', 'head_dim'], 'What --factor widens in '
                          'attention: more heads (standard model) or wider heads.')
_EMBED = flags.DEFINE_float('embed', None, 'Factor of the embed (d_model) axis.')
_MLP = flags.DEFINE_float('mlp', None, 'Factor of the MLP hidden axis.')
_HEADS = flags.DEFINE_float('heads', None, 'Factor of the number of query heads.')
_HEAD_DIM = flags.DEFINE_float('head_dim', None, 'Factor of the head dimension.')
_KV_HEADS = flags.DEFINE_float('kv_heads', None, 'Factor of the kv heads (default: --kv_rule).')
_KV_RULE = flags.DEFINE_enum('kv_rule', 'auto', list(cloning.KV_RULES), 'GQA/MQA: auto (kv heads '
                             'follow heads, MQA stays MQA) | follow | keep (MQA only).')
_AXES = flags.DEFINE_string('axes', '', 'Any logical axes: name=factor,... (e.g. embed=2,mlp=4).')
_SIZES = flags.DEFINE_string('sizes', '', 'Destination sizes: name=size,... (e.g. embed=1536).')
_VARIANT = flags.DEFINE_enum('variant', 'noisy_symmetric', list(cloning.VARIANTS), 'Clone variant.')
_SNR = flags.DEFINE_float('snr_db', 10.0, 'Noise of the noisy variants, dB.')
_NOISE = flags.DEFINE_enum('noise_dist', 'irwin_hall', list(cloning.NOISE_DISTS), 'Noise shape.')
_TIE = flags.DEFINE_enum('tie', 'keep', list(cloning.TIE_MODES), 'Tied embeddings: keep | untie.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the noise.')
_FORMAT = flags.DEFINE_enum('format', None, list(clone_job.FORMATS), 'Output format (default: '
                            'as --src).')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16', 'float16'], 'HF output dtype '
                           '(default: the source\'s).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step of an orbax --src (default: latest).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --dst.')
_OPT = flags.DEFINE_bool('with_opt_state', False, 'Also widen the Adam moments (orbax src and '
                         'dst): --dst becomes a trainer workdir that resumes the run.')
_CHECK = flags.DEFINE_bool('check', True, 'Compare clone and source logits (fp32).')
_MAX_MEM = flags.DEFINE_float('max_memory_gb', None, 'Refuse clones whose estimated peak memory '
                              '(source + 2 x clone; x3 with --with_opt_state) exceeds this; '
                              'default: the memory available now; 0: no check.')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)   # the stage lines below; orbax/grain/tfds stay quiet
  _logging.quiet_libraries(_errors.verbose())
  with _errors.user_errors('clone'):
    # Checked here rather than with mark_flags_as_required, which would make every other
    # absl main imported into the same process (tests) demand --src / --dst too; and one
    # line, not app.UsageError's page of help before the message.
    missing = [f'--{f}' for f, v in (('src', _SRC.value), ('dst', _DST.value)) if not v]
    if missing:
      raise errors.UserInputError(f'{" and ".join(missing)} required: the checkpoint to clone '
                                  'and where to write the clone (--helpshort lists the flags)')
    src_cfg = clone_job.source_config(_SRC.value, _STEP.value)   # no params loaded yet
    factors = clone_job.cli_factors(src_cfg, factor=_FACTOR.value, attention=_ATTN.value,
                                    embed=_EMBED.value, mlp=_MLP.value, heads=_HEADS.value,
                                    head_dim=_HEAD_DIM.value, kv_heads=_KV_HEADS.value,
                                    axes=_AXES.value, sizes=_SIZES.value)
    limit = None if _MAX_MEM.value is None else int(_MAX_MEM.value * memory.GB)
    # --dst, the plan and the memory are checked before the source's params are loaded
    res = clone_job.clone_checkpoint(_SRC.value, _DST.value, factors, step=_STEP.value,
                                     variant=_VARIANT.value,
                                     snr_db=_SNR.value, seed=_SEED.value, fmt=_FORMAT.value,
                                     overwrite=_OVERWRITE.value, with_opt_state=_OPT.value,
                                     kv_rule=_KV_RULE.value, tie=_TIE.value,
                                     noise_dist=_NOISE.value, dtype=_DTYPE.value,
                                     check=_CHECK.value, max_bytes=limit)
  print(res.summary)
  if res.rel_error is not None:
    print(f'logits: max |clone - source| / max |source| = {res.rel_error:.2e} (fp32)')
  print(f'wrote {res.fmt} {res.dst}')
  print(clone_job.usage_hint(res))


if __name__ == '__main__':
  app.run(main, flags_parser=_errors.parse_flags)
