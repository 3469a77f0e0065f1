"""One clear line for the errors a user can cause, in every main; the traceback on --verbose.

    app.run(main, flags_parser=_errors.parse_flags)       # bad --config.<key>: one line
    with _errors.user_errors('train', workdir):           # bad preset, mesh, optimizer, ...
      ...
    _logging.quiet_libraries(_errors.verbose())           # orbax INFO only with --verbose

Only bad input is one line: `hyperinit.errors.UserInputError` and the standard ValueError
it derives from (a wrong value), OSError (a missing file, a full or read-only disk),
a corrupt checkpoint, a broken safetensors file.  TypeError, KeyError and everything
else are bugs: they keep their traceback.
"""

import os
import shutil
import sys

from absl import flags
from safetensors import SafetensorError

from hyperinit import errors
from hyperinit.checkpoint import CheckpointError

# What bad input raises (a wrong value, a missing file, a full or read-only disk, a corrupt
# checkpoint); anything else (TypeError, KeyError, ...) is a bug and keeps its traceback.
# errors.UnknownKeyError is a KeyError the library raises for a name a user gave.
USER_ERRORS = (errors.UserInputError, ValueError, OSError, CheckpointError, SafetensorError)

_VERBOSE = flags.DEFINE_bool('verbose', False, 'On an error, show the full traceback instead of '
                             'one line; show the INFO lines of orbax, grain and tfds.')
# Flags defined below through this module's helpers (define_config_file) belong to the main
# that calls them, so --helpshort lists them there.
flags.disclaim_key_flags()


def verbose() -> bool:
  """--verbose: tracebacks on errors and the libraries' INFO lines (also before flag parsing)."""
  if flags.FLAGS.is_parsed():
    return bool(_VERBOSE.value)
  return _verbose_in(sys.argv)


def _verbose_in(argv) -> bool:
  return any(a in ('--verbose', '--verbose=true', '--verbose=1') for a in argv)


def config_path(arg: str) -> str:
  """`configs/x.py[:args]` as given when that file exists (relative to cwd, as ml_collections
  reads it), else the same file of the installed `configs` package, so `--config=configs/lm.py:gpt2`
  works from any directory once hyperinit is installed (`pip install -e .`)."""
  path, colon, rest = arg.partition(':')
  parts = os.path.normpath(path).split(os.sep)
  if os.path.exists(path) or parts[0] != 'configs':
    return arg
  import configs  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(configs.__file__), *parts[1:]) + colon + rest


class _ConfigPathParser:
  """The config flag's parser, reading a command-line path through `config_path`."""

  def __init__(self, inner):
    self._inner = inner

  def parse(self, argument):
    return self._inner.parse(config_path(argument) if isinstance(argument, str) else argument)

  def __getattr__(self, name):
    return getattr(self._inner, name)


def define_config_file(default: str | None, help_text: str, **kw):
  """`config_flags.DEFINE_config_file('config', ...)` whose failures are one line.

  With a default config file, ml_collections loads it and applies the `--config.<key>`
  overrides of sys.argv when the flag is *defined* (at import), before `parse_flags` runs.
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    holder = config_flags.DEFINE_config_file('config', default and config_path(default),
                                            help_text, **kw)
    flags.FLAGS['config'].parser = _ConfigPathParser(flags.FLAGS['config'].parser)
    return holder
  except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    # ml_collections reports a bad override as any of these: flag parsing, not a bug.
    if verbose():
      raise
    inner = e   # ml_collections wraps a KeyError (whose str() is a repr) in an AttributeError
    while inner.args and isinstance(inner.args[0], BaseException):
      inner = inner.args[0]
    raw = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
    text = ' '.join(l.strip() for l in raw.splitlines() if l.strip())
    _fatal(f'a --config override failed ({type(e).__name__}: {text}): no such field in the '
           'config, or a value of the wrong type')


def parse_flags(argv):
  """absl's flag parsing, where every failure is one line and exit status 1: a config file
  whose get_config raises (a bad preset or option: its message, not ml_collections' embedded
  traceback) and a config override that fails (an unknown `--config.<key>`, a wrong type)."""
  loud = _verbose_in(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if loud or len(lines) < 2:
      _fatal(str(e))
    _fatal(f'{lines[0].rstrip(":")}: {lines[-1]}')   # where, then the exception's own line
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if loud:
      raise
    _fatal(f'a --config override failed ({type(e).__name__}: {e}): no such field in the '
           'config, or a value of the wrong type')


def _fatal(message: str):
  sys.stderr.write(f'FATAL Flags parsing error: {message}\n'
                   'Pass --helpshort or --helpfull to see help on flags; --verbose for more.\n')
  sys.exit(1)


class user_errors:  # pylint: disable=invalid-name
  """Context manager: a `USER_ERRORS` exception exits with 'PROG: error: MESSAGE' (status 1).

  `workdir`, when this run created it and no run under it saved a checkpoint, is removed, so a
  failed start leaves nothing behind (and a study that failed late keeps its finished runs).
  With --verbose the exception propagates with its traceback.
  """

  def __init__(self, prog: str, workdir: str | None = None):
    self.prog, self.workdir = prog, workdir
    self.existed = workdir is not None and os.path.exists(workdir)

  def __enter__(self):
    return self

  def __exit__(self, kind, error, tb):
    if error is None or not isinstance(error, USER_ERRORS) or verbose():
      return False
    if self.workdir and not self.existed and not _has_checkpoint(self.workdir):
      shutil.rmtree(self.workdir, ignore_errors=True)
    sys.exit(f'{self.prog}: error: {error}' + ('' if isinstance(error, (ValueError, OSError))
                                               else f' ({type(error).__name__})')
             + ' [--verbose for the traceback]')


def _has_checkpoint(workdir: str) -> bool:
  """Whether any run under `workdir` (itself, or a study's sub-runs) saved a checkpoint."""
  for root, dirs, _ in os.walk(workdir):
    if os.path.basename(root) == 'checkpoints' and any(d.isdigit() for d in dirs):
      return True
  return False
