"""Every ```python block in README.md and docs/*.md runs as printed.

Each file's blocks run in order in one fresh namespace (a later block may use an earlier
block's names), with the working directory a fresh temp dir (so relative output paths such as
'out/model' land there) and no network (HF_HUB_OFFLINE).  A snippet that cannot run here must
not be a ```python block (use ```text or a prose sentence).
"""

import glob
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
_BLOCK = re.compile(r'^```python[ \t]*\n(.*?)^```[ \t]*$', re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
  """(first line number, source) of each ```python block in a markdown text."""
  return [(text.count('\n', 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def test_python_blocks_are_found():
  text = 'a\n```python\nx = 1\n```\n```text\nnot = code\n```\n```python\ny = x\n```\n'
  assert python_blocks(text) == [(3, 'x = 1\n'), (9, 'y = x\n')]


def _cases():
  for f in FILES:
    if not python_blocks(open(f).read()):
      continue
    yield pytest.param(f, id=os.path.relpath(f, ROOT))


@pytest.mark.parametrize('path', list(_cases()))
def test_snippets_run(path, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('TMPDIR', str(tmp_path))
  monkeypatch.setattr(sys, 'argv', ['snippet'])
  namespace = {'__name__': '__snippet__'}
  rel = os.path.relpath(path, ROOT)
  for line, source in python_blocks(open(path).read()):
    code = compile(source, f'{rel}:{line}', 'exec')
    try:
      exec(code, namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      raise AssertionError(f'{rel}, the ```python block at line {line} fails: '
                           f'{type(e).__name__}: {e}') from e
