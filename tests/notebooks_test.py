"""Every notebook in notebooks/ runs top to bottom (the tiny size: HYPERINIT_NOTEBOOK_SIZE=tiny).

The notebooks assert their own claims (function preservation, transformers parity, ...), so an
error in any cell fails the test with the cell's traceback.
"""

import glob
import os

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb')))


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch, tmp_path):
  monkeypatch.setenv('HYPERINIT_NOTEBOOK_SIZE', 'tiny')
  monkeypatch.setenv('TMPDIR', str(tmp_path))     # the notebooks' work dirs go here
  nb = nbformat.read(path, as_version=4)
  assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code'), (
      f'{os.path.basename(path)} is committed with outputs: clear them')
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': ROOT}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if o.output_type == 'error']
  assert not errors
  assert any(o.output_type == 'display_data' and 'image/png' in o.data
             for c in nb.cells if c.cell_type == 'code' for o in c.outputs), 'no plot'
