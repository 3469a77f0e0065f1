"""experiments/clone.py: HF dir -> clone -> HF dir (transformers logits), trainer checkpoint ->
clone -> orbax (init_from trains; --with_opt_state resumes), bad input.

Reference for the HF cases: the SOURCE transformers model's logits (torch, fp32, eager
attention); the clone is written by our CLI and read back by transformers' from_pretrained.
Tolerance: max |clone - source| <= 1e-5 * max |source| (fp32).
"""

import logging
import os
import re

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')


import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags

from experiments import clone as clone_main
from hf_testing import TOK_IDS, TOKENS, randomize_torch, require_hf
import train_testing
from hyperinit import _io, checkpoint, models
from hyperinit.train import clone_job
from hyperinit.train import loop, metrics

RTOL = 1e-5


def run_cli(*args):
  """experiments/clone.py's main, in-process, with these flags."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['clone', *args])
  clone_main.main([])


# name -> (transformers config, extra CLI flags)
HF_CASES = {
    'gpt2-head_dim-noisy_diagonal': (lambda T: T.GPT2Config(
        vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4, **TOK_IDS),
        ['--attention=head_dim', '--variant=noisy_diagonal']),
    'opt': (lambda T: T.OPTConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2,
                                  ffn_dim=64, max_position_embeddings=32, num_attention_heads=4,
                                  **TOK_IDS), ['--variant=diagonal']),
    'gpt_neox-partial-rotary': (lambda T: T.GPTNeoXConfig(
        vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=32,
        rope_parameters={'rope_type': 'default', 'rope_theta': 500.0,
                         'partial_rotary_factor': 0.5}, **TOK_IDS), ['--mlp=3']),
    'llama-gqa-untied': (lambda T: T.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, **TOK_IDS), []),
    # An explicit head_dim (!= hidden / heads) that Llama's config expresses: not refused.
    'llama-explicit-head_dim': (lambda T: T.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=32,
        **TOK_IDS), []),
    'llama-mqa-tied': (lambda T: T.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32,
        tie_word_embeddings=True, **TOK_IDS), ['--variant=symmetric']),
    'olmo-gqa': (lambda T: T.OlmoConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, **TOK_IDS), []),
}


def _logits(torch, model):
  model.eval()
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(TOKENS)).logits.numpy().astype(np.float64)


@pytest.mark.parametrize('name', sorted(HF_CASES))
def test_hf_in_clone_hf_out_transformers_logits_equal(name, tmp_path):
  torch, T = require_hf()
  make, extra = HF_CASES[name]
  src = T.AutoModelForCausalLM.from_config(make(T), attn_implementation='eager')
  randomize_torch(torch, src)
  src.save_pretrained(tmp_path / 'src')
  run_cli(f'--src={tmp_path / "src"}', f'--dst={tmp_path / "dst"}', '--factor=2', '--seed=3',
          '--check=false', *extra)   # the reference below is transformers itself
  dst, info = T.AutoModelForCausalLM.from_pretrained(
      tmp_path / 'dst', dtype=torch.float32, attn_implementation='eager', output_loading_info=True)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys')), info
  c_src, c_dst = src.config, dst.config
  assert c_dst.hidden_size == 2 * c_src.hidden_size, 'the clone was not widened'
  assert c_dst.num_attention_heads == c_src.num_attention_heads * (
      1 if '--attention=head_dim' in extra else 2)
  ref, out = _logits(torch, src), _logits(torch, dst)
  scale = np.abs(ref).max()
  assert scale > 0.5, 'degenerate logits: the comparison would be weak'
  err = np.abs(out - ref).max()
  assert err <= RTOL * scale, f'{name}: max |clone - source| {err:.3g} > {RTOL} * {scale:.3g}'
  n_src, n_dst = (sum(p.numel() for p in m.parameters()) for m in (src, dst))
  assert n_dst > 2 * n_src


def test_hf_clone_keeps_the_tokenizer_and_generation_config(tmp_path, caplog):
  """HF -> clone -> HF carries the tokenizer files and generation_config.json unchanged."""
  torch, T = require_hf()
  tokenizers = pytest.importorskip('tokenizers')
  src = T.AutoModelForCausalLM.from_config(HF_CASES['llama-gqa-untied'][0](T),
                                           attn_implementation='eager')
  randomize_torch(torch, src)
  src.save_pretrained(tmp_path / 'src')
  vocab = {'<unk>': 0, **{f'w{i}': i for i in range(1, 101)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='<unk>').save_pretrained(
      tmp_path / 'src')
  T.GenerationConfig(max_new_tokens=3, do_sample=False, eos_token_id=7).save_pretrained(
      tmp_path / 'src')
  with caplog.at_level(logging.INFO):
    run_cli(f'--src={tmp_path / "src"}', f'--dst={tmp_path / "dst"}', '--factor=2', '--seed=3')
  # progress lines, one per stage, with the elapsed time (a big checkpoint takes minutes)
  for stage in (r'clone: loaded .* \(hf, [\d.]+ s\)', r'clone: cloned [\d,]+ -> [\d,]+ params',
                r'clone: logits checked', r'save_hf .*model.safetensors written \(1 of 1 files',
                r'clone: wrote hf .*elapsed'):
    assert re.search(stage, caplog.text), stage
  carried = sorted(f for f in os.listdir(tmp_path / 'src')
                   if f not in ('config.json', 'model.safetensors'))
  assert 'tokenizer.json' in carried and 'generation_config.json' in carried
  for f in carried:
    assert (tmp_path / 'dst' / f).read_bytes() == (tmp_path / 'src' / f).read_bytes(), f
  text = 'w5 w17 w99 w3'
  assert (T.AutoTokenizer.from_pretrained(tmp_path / 'dst')(text)['input_ids'] ==
          T.AutoTokenizer.from_pretrained(tmp_path / 'src')(text)['input_ids'])
  # A pipeline on the clone: greedy generation as configured by the carried generation_config.
  pipe = T.pipeline('text-generation', model=str(tmp_path / 'dst'), device='cpu')
  assert pipe.model.generation_config.max_new_tokens == 3
  out = pipe(text)[0]['generated_text']
  assert out.startswith(text) and len(out.split()) <= 4 + 3


def test_hf_refusal_names_the_reason_and_suggests_orbax(tmp_path):
  """head_dim growth under RoPE is not a standard Llama: HF output refused, orbax written."""
  torch, T = require_hf()
  src = T.AutoModelForCausalLM.from_config(HF_CASES['llama-gqa-untied'][0](T),
                                           attn_implementation='eager')
  randomize_torch(torch, src)
  src.save_pretrained(tmp_path / 'src')
  args = (f'--src={tmp_path / "src"}', f'--dst={tmp_path / "dst"}', '--factor=2',
          '--attention=head_dim', '--check=false')
  with pytest.raises(SystemExit, match=r'refusing --format=hf: .* not a standard Hugging Face '
                     r"model of family 'llama': rope_tile=2: .*Write it with --format=orbax"):
    run_cli(*args)
  assert not os.path.exists(tmp_path / 'dst')
  # the same clone as orbax is accepted and runs (our model implements rope_tile)
  run_cli(*args, '--format=orbax')
  params, cfg = checkpoint.load_params(tmp_path / 'dst')
  assert cfg.rope_tile == 2 and cfg.d_head == 16 and cfg.family == 'llama'
  ref = _logits(torch, src)
  ours = np.asarray(models.apply_fn(cfg)(params, TOKENS), np.float64)
  assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()   # the interop tolerance


# --- our trainer's checkpoints ------------------------------------------------------------

def lm_config(steps, **kw):
  return train_testing.tiny_lm_config(steps, **{
      'batch_size': 8, 'optimizer.learning_rate': 1e-2, 'log_every': 4, 'eval_every': 4,
      'eval_batches': 2, 'checkpoint.every': 4, 'checkpoint.async_save': False,
      'mesh.data': -1,   # data parallel over the 8 forced host devices
      **kw})


@pytest.fixture(scope='module')
def source_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('src'))
  loop.train_and_evaluate(lm_config(8), workdir)
  return workdir


def test_trainer_checkpoint_clone_orbax_init_from_trains(source_run, tmp_path):
  dst = str(tmp_path / 'clone')
  run_cli(f'--src={source_run}', f'--dst={dst}', '--factor=2')   # default format: as the source
  params, cfg = checkpoint.load_params(dst)
  assert (cfg.embed_dim, cfg.num_heads, cfg.mlp_dim) == (128, 8, 512)
  meta = checkpoint.Checkpointer(dst, read_only=True).meta()
  assert meta['clone']['variant'] == 'noisy_symmetric' and meta['clone']['source_step'] == 8
  assert meta['clone']['logits_max_rel_error'] < RTOL
  # init_from: the architecture comes from the clone; step-0 eval = the source's final eval.
  # One AdamW step at a constant LR without decay: the first Adam update is
  # lr * g / (|g| + eps) (bias-corrected m / sqrt(v)), so every entry of the clone moves by at
  # most lr and nearly all by ~lr: the run trains the clone's params with the configured optimizer.
  lr = 1e-3
  conf = lm_config(1, **{'model.name': 'init_from', 'eval_at_start': True,
                         'optimizer.schedule': 'constant', 'optimizer.warmup_steps': 0,
                         'optimizer.weight_decay': 0.0, 'optimizer.learning_rate': lr,
                         'checkpoint.every': 1})
  conf.init_from = dst
  out = loop.train_and_evaluate(conf, str(tmp_path / 'run'))
  assert out['step'] == 1 and np.isfinite(out['eval']['loss'])
  src_evals = [r for r in metrics.read_jsonl(source_run) if r['split'] == 'eval']
  run_evals = [r for r in metrics.read_jsonl(str(tmp_path / 'run')) if r['split'] == 'eval']
  assert run_evals[0]['step'] == 0
  assert run_evals[0]['loss'] == pytest.approx(src_evals[-1]['loss'], rel=1e-5)
  after, _ = checkpoint.load_params(str(tmp_path / 'run'))
  deltas = np.concatenate([np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel()
                           for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(params))])
  assert deltas.max() <= lr * (1 + 1e-3)   # + float32 rounding of params near 1 (~1e-7)
  assert np.mean(deltas > 0.9 * lr) > 0.9, np.mean(deltas > 0.9 * lr)


def test_with_opt_state_resumes_the_run_at_the_wider_size(source_run, tmp_path):
  dst = str(tmp_path / 'wide')
  run_cli(f'--src={source_run}', f'--dst={dst}', '--factor=2', '--variant=symmetric',
          '--with_opt_state')
  ck = checkpoint.Checkpointer(os.path.join(dst, 'checkpoints'), read_only=True)
  assert ck.all_steps() == [8] and ck.data_state_available(8)
  # Adam moments widened by the gradient rule (NumPy): mu_D = tile(mu_S) / 2 for a hidden kernel
  src_ck = checkpoint.Checkpointer(os.path.join(source_run, 'checkpoints'), read_only=True)
  raw = lambda c: c.manager.restore(8, args=ocp.args.Composite(
      opt_state=ocp.args.StandardRestore()))['opt_state']
  mu_s = _find_mu(raw(src_ck))['block_0']['mlp']['wo']['kernel']
  mu_d = _find_mu(raw(ck))['block_0']['mlp']['wo']['kernel']
  np.testing.assert_allclose(mu_d, np.tile(mu_s, (2, 2)) / 2, rtol=1e-6, atol=1e-12)
  # resume: the trainer finds step 8 in DST and continues to 12 on the wider model
  conf = lm_config(12, **{'model.name': 'init_from'})
  out = loop.train_and_evaluate(conf, dst)
  assert out['step'] == 12
  assert out['state'].params['block_0']['mlp']['wi']['kernel'].shape == (128, 512)
  rows = [r['step'] for r in metrics.read_jsonl(dst) if r['split'] == 'train']
  assert rows == [12]


def _find_mu(state):
  """The 'mu' tree of an optax state restored as nested containers."""
  if isinstance(state, dict):
    if 'mu' in state and isinstance(state['mu'], dict):
      return state['mu']
    items = state.values()
  elif isinstance(state, (list, tuple)):
    items = state
  else:
    return None
  for v in items:
    found = _find_mu(v)
    if found is not None:
      return found
  return None


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize('args, match', [
    (['--factor=1.5'], r"factor 1.5 for axis 'all widened axes' is not an integer.*Net2Net"),
    (['--sizes=embed=96'], r"axis 'embed': destination size 96 is not a multiple of the source "
                           r'size 64'),
    (['--axes=vocab=2'], r"axis 'vocab' cannot be widened"),
    (['--axes=position=2,embed=2'], r"axis 'position' cannot be widened"),
    (['--axes=layers=2'], r"axis 'layers' cannot be widened"),
    (['--axes=experts=2'], r"axis 'experts' .* does not occur in the parameter annotations"),
    (['--factor=2', '--kv_heads=3'], r'kv_heads factor 3 with heads factor 2'),
    (['--embed=1'], r'nothing to widen'),
    (['--axes=embed'], r"--axes: bad item 'embed'"),
    (['--factor=2', '--format=hf', '--with_opt_state'], r'--with_opt_state needs a checkpoint'),
])
def test_bad_input_names_the_axis(source_run, tmp_path, args, match):
  with pytest.raises(SystemExit, match=match):
    run_cli(f'--src={source_run}', f'--dst={tmp_path / "dst"}', *args)
  assert not os.path.exists(tmp_path / 'dst')


def test_existing_output_missing_source_and_atomic_write(source_run, tmp_path):
  dst = tmp_path / 'dst'
  dst.mkdir()
  (dst / 'keep.txt').write_text('x')
  with pytest.raises(SystemExit, match='exists and is not empty; pass --overwrite'):
    run_cli(f'--src={source_run}', f'--dst={dst}', '--factor=2')
  with pytest.raises(SystemExit, match='does not exist'):
    run_cli(f'--src={tmp_path / "nope"}', f'--dst={tmp_path / "x"}', '--factor=2')
  # a failure while writing leaves the old output untouched and no temporary directory
  with pytest.raises(RuntimeError, match='disk full'):
    with _io.atomic_dir(str(dst), overwrite=True) as tmp:
      open(os.path.join(tmp, 'partial'), 'w').close()
      raise RuntimeError('disk full')
  assert sorted(os.listdir(dst)) == ['keep.txt'] and sorted(os.listdir(tmp_path)) == ['dst']
  run_cli(f'--src={source_run}', f'--dst={dst}', '--factor=2', '--overwrite', '--format=hf',
          '--check=false')
  assert sorted(os.listdir(dst)) == ['config.json', 'model.safetensors']
  assert clone_job.load_source(str(dst)).cfg.embed_dim == 128
  # --overwrite never deletes the source: a destination that is or contains it is refused
  # (tests/clone_safety_test.py: inside it, by real path, through symlinks).
  for bad in (source_run, os.path.dirname(source_run)):
    with pytest.raises(SystemExit, match=r'(is|contains) the source run .* pick a --dst outside'):
      run_cli(f'--src={source_run}', f'--dst={bad}', '--factor=2', '--overwrite')
  assert os.path.isdir(os.path.join(source_run, 'checkpoints'))
