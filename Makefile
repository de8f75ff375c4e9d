# `make test` and `make bench` set everything up on a fresh machine (a venv,
# torch, the native build) and run. TORCH picks the torch build: the default
# is the CPU wheel; on a GPU machine use e.g. `make test TORCH=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps
BUILT := $(VENV)/.built
SOURCES := setup.py pyproject.toml $(shell find csrc -type f)

.PHONY: test bench build clean

test: $(BUILT)
	$(PY) -m pytest -q tests

bench: $(BUILT)
	$(PY) -m benchmarks

build: $(BUILT)

$(DEPS): Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" pybind11 ninja pytest numpy tqdm matplotlib "setuptools>=64" wheel
	touch $@

$(BUILT): $(DEPS) $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build *.egg-info fusedopt/_C*.so $(BUILT)
