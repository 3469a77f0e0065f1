"""The docs cannot drift: every relative link in README.md and docs/*.md resolves (file and
#anchor), and the README's config table names each config's real presets, flags and options."""

import glob
import importlib
import os
import re

import pytest

from configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ['README.md'] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
_LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def _prose(text):
  """The lines outside ``` code fences."""
  fenced = False
  for line in text.splitlines():
    if line.lstrip().startswith('```'):
      fenced = not fenced
    elif not fenced:
      yield line


def anchors(path):
  """GitHub's heading anchors of a markdown file: lower case, punctuation dropped, spaces to
  hyphens; a repeated heading gets -1, -2, ..."""
  seen, out = {}, set()
  for line in _prose(open(path, encoding='utf-8').read()):
    m = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
    if not m:
      continue
    slug = re.sub(r'[^\w\- ]', '', m.group(1).strip().lower()).replace(' ', '-')
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f'{slug}-{n}')
  return out


def test_anchor_slugs():
  import tempfile
  with tempfile.NamedTemporaryFile('w', suffix='.md', delete=False) as f:
    f.write('# Clone → muP → train\n## Results (2026-12-04)\n```\n# not a heading\n```\n'
            '## `a.py`: b\n## `a.py`: b\n')
  try:
    assert anchors(f.name) == {'clone--mup--train', 'results-2026-12-04', 'apy-b', 'apy-b-1'}
  finally:
    os.remove(f.name)


@pytest.mark.parametrize('doc', DOCS)
def test_relative_links_resolve(doc):
  path = os.path.join(ROOT, doc)
  bad = []
  for line in _prose(open(path, encoding='utf-8').read()):
    for target in _LINK.findall(line):
      if re.match(r'[a-z]+:', target):   # http:, https:, mailto:
        continue
      file, _, anchor = target.partition('#')
      dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
      if not os.path.exists(dest):
        bad.append(f'{target}: no file {os.path.relpath(dest, ROOT)}')
      elif anchor and dest.endswith('.md') and anchor not in anchors(dest):
        bad.append(f'{target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}')
  assert not bad, f'{doc}: broken links:\n' + '\n'.join(bad)


def _readme_config_rows():
  """{'configs/lm.py': (presets, default, flags, options)} from the README's config table."""
  rows = {}
  for line in open(os.path.join(ROOT, 'README.md'), encoding='utf-8'):
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if len(cells) != 3 or not cells[0].startswith('`configs/'):
      continue
    names = re.findall(r'`([^`]+)`', cells[1])
    default = re.findall(r'`([^`]+)` \(default\)', cells[1])
    opts = re.findall(r'`([^`]+)`', cells[2])
    for f in re.findall(r'`(configs/[^`]+\.py)`', cells[0]):
      rows[f] = (set(names), default[0] if default else None,
                 {o for o in opts if not o.endswith('=')}, {o[:-1] for o in opts if o.endswith('=')})
  return rows


def config_arguments(name):
  """What configs/NAME.py's get_config accepts, read from its call of common.parse_arg (its
  `what` is NAME; the configs it builds on parse their own): (presets, default, flags, options)."""
  calls = []
  real = common.parse_arg

  def spy(arg, what, presets, default, **options):
    if what == name:
      calls.append((set(presets), default,
                    {k for k, v in options.items() if isinstance(v, bool)},
                    {k for k, v in options.items() if not isinstance(v, bool)}))
    return real(arg, what, presets, default, **options)

  common.parse_arg = spy
  try:
    importlib.import_module(f'configs.{name}').get_config()
  finally:
    common.parse_arg = real
  assert len(calls) == 1, (name, calls)
  return calls[0]


def test_readme_config_table_matches_the_configs():
  rows = _readme_config_rows()
  files = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if os.path.basename(p) not in ('__init__.py', 'common.py'))
  assert sorted(rows) == files, 'the README config table must have one row per config file'
  for f in files:
    want = config_arguments(os.path.basename(f)[:-3])
    assert rows[f] == want, f'README row of {f}: {rows[f]}; the config accepts {want}'


def test_readme_entry_point_table_lists_every_main():
  listed = set()
  for line in open(os.path.join(ROOT, 'README.md'), encoding='utf-8'):
    m = re.match(r'\| `experiments\.(\w+)` \|', line)
    if m:
      listed.add(m.group(1))
  mains = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'experiments', '*.py'))
           if not os.path.basename(p).startswith('_')}
  assert listed == mains, f'README entry points {sorted(listed)}; experiments/ has {sorted(mains)}'
