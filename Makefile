# make demo : set up .venv and run the main job (HyperCloning demo on embedded data).
# make test : set up .venv with the test extras (CPU torch + transformers) and run pytest;
#             the 10 slowest tests are listed at the end (setup.cfg addopts --durations=10),
#             compiled programs are cached across tests and runs (tests/conftest.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/demo
PYTEST_ARGS ?= -n 2 --dist loadfile   # a file's tests share one worker: module fixtures built once

.PHONY: demo test venv clean

$(VENV)/.core: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[plots]'
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PY) -m pip install -q -e '.[test,hf]'
	touch $@

venv: $(VENV)/.core

demo: $(VENV)/.core
	$(PY) -m experiments.demo --workdir=$(WORKDIR)

test: $(VENV)/.test
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) workdir
