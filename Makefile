# `make test` and `make bench` set everything up on a fresh machine (a venv,
# torch, the native build) and run. TORCH picks the torch build: the default
# is the CPU wheel; on a GPU machine use e.g. `make test TORCH=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# 1 or 0 forces the CUDA kernels in or out; empty: built when torch sees a GPU.
FUSEDOPT_CUDA ?=
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps
BUILT := $(VENV)/.built
SOURCES := setup.py pyproject.toml $(shell find csrc -type f)

NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
CUDA_CHECK := build/cuda-check

.PHONY: test bench build clean cuda-check

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
	MAX_JOBS=$${MAX_JOBS:-2} FUSEDOPT_CUDA=$(FUSEDOPT_CUDA) $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

# Compiles every CUDA source to an object file for each of CUDA_ARCHS, so a
# CUDA error fails CI on a machine without a GPU. The CPU torch wheel ships
# the CUDA headers but not the generated cuda_cmake_macros.h: a one-line
# stand-in goes after torch's include path, so a real one wins.
cuda-check: $(DEPS)
	mkdir -p $(CUDA_CHECK)/stub/c10/cuda/impl
	echo '#define C10_CUDA_BUILD_SHARED_LIBS' > $(CUDA_CHECK)/stub/c10/cuda/impl/cuda_cmake_macros.h
	set -e; includes="$$($(PY) -c 'from torch.utils.cpp_extension import include_paths; print(" ".join("-I" + p for p in include_paths()))')"; \
	abi="$$($(PY) -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"; \
	for arch in $(CUDA_ARCHS); do for src in csrc/cuda/*.cu; do \
	  echo "nvcc sm_$$arch $$src"; \
	  $(NVCC) -c $$src -o $(CUDA_CHECK)/$$(basename $$src .cu)_sm$$arch.o -std=c++20 -O3 --expt-relaxed-constexpr \
	    -gencode arch=compute_$$arch,code=sm_$$arch $$includes -I$(CUDA_CHECK)/stub -Icsrc/include -Icsrc \
	    -D_GLIBCXX_USE_CXX11_ABI=$$abi -Xcompiler -fPIC; \
	done; done

clean:
	rm -rf build *.egg-info fusedopt/_C*.so $(BUILT)
