PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test test-deps cuda-check cmake bench

# Installs the pinned CPU torch (from disk here; never an unpinned torch) and robustx with its
# compiled operator library, built against that torch (no build isolation).
setup:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q setuptools wheel ninja
	$(PIP) install -q --no-build-isolation -e .

demo: setup
	$(PYTHON) -m robustx demo

test-deps:
	$(PIP) install -q -r requirements-test.txt

test: setup test-deps cuda-check
	$(PYTHON) -c "import robustx; assert robustx.ops.compiled(), \"robustx._C is not in use\""
	$(PYTHON) -m pytest -q tests

# Compile-checks every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 (no GPU needed).
cuda-check:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake --target cuda_check -j2

# The operator library as a plain shared library (torch.ops.load_library).
cmake:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake --target robustx_ops -j2

bench: setup test-deps
	$(PYTHON) bench/bench_ops.py
