"""The house has one direction: core <- methods <- train <- studies, with no circles.

Every import in `hyperinit/` is read from the source (module level and inside
functions alike), so an arrow cannot hide in a function body.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / 'hyperinit'
# The layer order the README's layout section states.
LAYERS = {
    'core': ('spec', 'user_model', 'errors', 'models', 'interop', 'sharding', 'data',
             'checkpoint'),
    'methods': ('cloning', 'mup', 'logah'),
    'train': ('train',),
    'studies': ('studies',),
}
RANK = {name: i for i, names in enumerate(LAYERS.values()) for name in names}


def _unit(module: str) -> str:
  """'hyperinit.cloning.widen' -> 'cloning'; private helpers ('_io') and the root are core."""
  parts = module.split('.')
  if len(parts) == 1 or parts[1].startswith('_'):
    return 'spec'   # ranks as core
  return parts[1]


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for f in sorted(PKG.rglob('*.py')):
    parts = f.relative_to(ROOT).with_suffix('').parts
    out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = f
  return out


def _imports(module: str, path: pathlib.Path, known: set[str]) -> list[tuple[int, str]]:
  """(line, imported module) for every import of a hyperinit module, at any depth."""
  pkg = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = pkg.split('.')[:len(pkg.split('.')) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      for a in node.names:   # `from pkg import module` names a module when one exists
        sub = f'{base}.{a.name}'
        out.append((node.lineno, sub if sub in known else base))
  return [(n, m) for n, m in out if m == 'hyperinit' or m.startswith(('hyperinit.', 'configs',
                                                                        'experiments'))]


def _graph():
  mods = _modules()
  known = set(mods)
  return mods, {m: _imports(m, p, known) for m, p in mods.items()}


def test_layer_table_covers_every_package():
  units = {_unit(m) for m in _modules()}
  assert units <= set(RANK), f'packages with no layer: {sorted(units - set(RANK))}'


def test_no_import_goes_up_a_layer():
  mods, graph = _graph()
  bad = []
  for mod, edges in graph.items():
    for line, target in edges:
      where = f'{mods[mod].relative_to(ROOT)}:{line}'
      if target.startswith(('configs', 'experiments')):
        bad.append(f'{where} imports {target} (the library never imports mains or configs)')
      elif RANK[_unit(target)] > RANK[_unit(mod)]:
        bad.append(f'{where} ({_unit(mod)}) imports {target} ({_unit(target)}, a layer above)')
  assert not bad, 'upward imports:\n' + '\n'.join(bad)


def test_no_import_cycles():
  _, graph = _graph()
  adj = {m: sorted({t for _, t in edges if t in graph and t != m}) for m, edges in graph.items()}
  # Tarjan's strongly connected components (iteration-free recursion is fine at this size).
  index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in adj[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        sccs.append(sorted(comp))

  for v in adj:
    if v not in index:
      visit(v)
  # A package's __init__ importing its own modules, which import siblings through the
  # package, is not a cycle of ideas; any other strongly connected set is.
  real = [c for c in sccs if not all(m == c[0] or m.startswith(c[0] + '.') for m in c)]
  assert not real, f'import cycles: {real}'


def test_the_checker_sees_function_level_and_upward_imports(tmp_path):
  """The walk is not vacuous: a function-level upward import is found."""
  f = tmp_path / 'm.py'
  f.write_text('def f():\n  from hyperinit.train import loop\n  return loop\n')
  edges = _imports('hyperinit.mup.m', f, {'hyperinit.train.loop'})
  assert edges == [(2, 'hyperinit.train.loop')]
  assert RANK[_unit(edges[0][1])] > RANK[_unit('hyperinit.mup.m')]


def test_library_below_studies_imports_without_matplotlib():
  """matplotlib is the `plots` extra: every module below the studies imports without it."""
  below = [m for m in _modules() if _unit(m) != 'studies']
  code = ('import sys; sys.modules["matplotlib"] = None\n'
          'import importlib\n'
          f'for m in {below!r}:\n'
          '  importlib.import_module(m)\n'
          'print("ok", len(sys.modules))\n')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.startswith('ok'), out.stderr[-2000:]


@pytest.mark.parametrize('module', ['hyperinit.studies.plots'])
def test_plots_say_which_extra_is_missing(module):
  code = ('import sys; sys.modules["matplotlib"] = None\n'
          f'from {module} import pyplot\n'
          'try:\n  pyplot()\nexcept ImportError as e:\n  print(e)\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert 'pip install "hyperinit[plots]"' in out.stdout, out.stderr[-2000:]
