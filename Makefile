# Everything installs into one Python environment: the active virtual environment, else
# .venv (created here: a stock Debian/Ubuntu python3 refuses system-wide installs, PEP 668).
ifdef VIRTUAL_ENV
ENV := $(VIRTUAL_ENV)
else
ENV := .venv
endif
PYTHON := $(ENV)/bin/python
PIP := $(PYTHON) -m pip

# Pinned torch (never an unpinned one): the CUDA 13.0 builds, which also run on a CPU.
TORCH := torch==2.14.1 torchvision==0.29.1

# The CUDA kernels are built whenever nvcc is found (ROBUSTX_CUDA=0 builds the CPU ops only).
NVCC := $(shell command -v nvcc 2>/dev/null)
ROBUSTX_CUDA ?= $(if $(NVCC),1,0)
export ROBUSTX_CUDA
ifeq ($(ROBUSTX_CUDA),1)
# torch guesses CUDA_HOME from the nvcc on the PATH, which may be a wrapper outside the
# toolkit; the toolkit's folder is the TOP that nvcc itself reports.
ifeq ($(origin CUDA_HOME),undefined)
CUDA_HOME := $(shell nvcc --dryrun x.cu 2>&1 | sed -n 's/^#\$$ TOP=//p' | xargs -r readlink -f)
endif
export CUDA_HOME
endif
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

CSRC := $(shell find csrc -type f)
STAMPS := build/stamps

.PHONY: setup build cuda-check demo test test-deps cmake bench

setup: build

$(PYTHON):
	python3 -m venv $(ENV)

$(ENV)/.robustx-torch: | $(PYTHON)
	$(PIP) install -q $(TORCH) setuptools wheel ninja
	@touch $@

# robustx (editable) and robustx._C, built against the installed torch (no build isolation);
# ninja keeps the objects in build/temp-*, so a rebuild compiles only changed sources.
# Then checks that every op has a kernel for each backend built.
build: $(STAMPS)/build-cuda$(ROBUSTX_CUDA)
$(STAMPS)/build-cuda$(ROBUSTX_CUDA): $(ENV)/.robustx-torch $(CSRC) setup.py pyproject.toml
	$(PIP) install -q --no-build-isolation -e .
	$(PYTHON) -m robustx.ops.kernels --require CPU $(if $(filter 1,$(ROBUSTX_CUDA)),--require CUDA)
	@mkdir -p $(STAMPS) && rm -f $(STAMPS)/build-cuda* && touch $@

# The real CUDA build (setup.py with torch's nvcc flags, for TORCH_CUDA_ARCH_LIST) and the
# kernels check, CUDA required; needs nvcc, not a GPU.
cuda-check:
	$(MAKE) build ROBUSTX_CUDA=1

demo: setup
	$(PYTHON) -m robustx demo

$(ENV)/.robustx-test-deps: $(ENV)/.robustx-torch requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	@touch $@
test-deps: $(ENV)/.robustx-test-deps

test: setup test-deps
	ROBUSTX_EXPECT_CUDA=$(ROBUSTX_CUDA) $(PYTHON) -m pytest -q tests

# The operator library as a plain shared library (torch.ops.load_library), CPU kernels.
cmake: $(ENV)/.robustx-torch
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(abspath $(PYTHON)) > /dev/null
	cmake --build build/cmake --target robustx_ops -j2

bench: setup test-deps
	$(PYTHON) bench/bench_ops.py
