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

.PHONY: test bench build clean cuda-check fuzz sanitize

test: $(BUILT)
	$(PY) -m pytest -q tests

bench: $(BUILT)
	$(PY) -m benchmarks

# The property tests with many random examples (make test runs a fixed,
# bounded set); about 5 minutes on 2 cores.
fuzz: $(BUILT)
	FUSEDOPT_FUZZ_EXAMPLES=$${FUSEDOPT_FUZZ_EXAMPLES:-5000} $(PY) -m pytest -q tests/test_properties.py

build: $(BUILT)

# The extension built with ASan and UBSan (-O1 -g) from a copy of the tree in
# build-sanitize/, and the native-op tests run under them; fails on any
# sanitizer report. Leaves the in-place build alone. See tools/sanitize.sh.
sanitize: $(DEPS)
	MAX_JOBS=$${MAX_JOBS:-2} PY=$(PY) tools/sanitize.sh

$(DEPS): Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" pybind11 ninja pytest hypothesis numpy tqdm matplotlib "setuptools>=64" wheel
	touch $@

$(BUILT): $(DEPS) $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} FUSEDOPT_CUDA=$(FUSEDOPT_CUDA) $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

# Compiles every CUDA source to an object file for each of CUDA_ARCHS, so a
# CUDA error fails CI on a machine without a GPU (independent objects: run it
# with -j). The CPU torch wheel ships the CUDA headers but not the generated
# cuda_cmake_macros.h: a one-line stand-in goes after torch's include path,
# so a real one wins.
CUDA_STUB := $(CUDA_CHECK)/stub/c10/cuda/impl/cuda_cmake_macros.h
CUDA_HEADERS := $(shell find csrc -name '*.h' -o -name '*.cuh')
CUDA_NAMES := $(basename $(notdir $(wildcard csrc/cuda/*.cu)))
CUDA_OBJECTS := $(foreach a,$(CUDA_ARCHS),$(CUDA_NAMES:%=$(CUDA_CHECK)/%_sm$(a).o))
CUDA_FLAGS := $(CUDA_CHECK)/nvcc-flags

cuda-check: $(CUDA_OBJECTS)
	$(PY) tools/check_stream_numbers.py $(CUDA_OBJECTS)

# torch's include paths and C++ ABI, read once.
$(CUDA_FLAGS): $(DEPS)
	mkdir -p $(dir $@)
	$(PY) -c 'import torch; from torch.utils.cpp_extension import include_paths as p; \
	  print(*("-I" + i for i in p()), "-D_GLIBCXX_USE_CXX11_ABI=%d" % torch._C._GLIBCXX_USE_CXX11_ABI)' > $@

$(CUDA_STUB):
	mkdir -p $(dir $@)
	echo '#define C10_CUDA_BUILD_SHARED_LIBS' > $@

define cuda_object_rule
$(CUDA_CHECK)/%_sm$(1).o: csrc/cuda/%.cu $(CUDA_HEADERS) $(CUDA_STUB) $(CUDA_FLAGS)
	@echo "nvcc sm_$(1) $$<"
	@$(NVCC) -c $$< -o $$@ -gencode arch=compute_$(1),code=sm_$(1) -std=c++20 -O3 --expt-relaxed-constexpr --fmad=false \
	  -Xcompiler -fPIC -Icsrc/include -Icsrc $$$$(cat $(CUDA_FLAGS)) -I$(CUDA_CHECK)/stub
endef
$(foreach a,$(CUDA_ARCHS),$(eval $(call cuda_object_rule,$(a))))

clean:
	rm -rf build *.egg-info fusedopt/_C*.so $(BUILT)
