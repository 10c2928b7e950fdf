# steptime: `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build to install when the venv has none. Users with a GPU keep their own CUDA build:
# install it into the venv first (or set TORCH_SPEC=torch); nothing here pins it once present.
TORCH_SPEC ?= torch==2.13.0
# Two install levels: what the demo needs (the package and its dependencies), and the test tools
# and optional extras the suite exercises on top.
STAMP := $(VENV)/.installed-base
STAMP_TEST := $(VENV)/.installed-test
# xdist runs test files on every core (a file's tests stay together, in order, on one worker).
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadfile -p no:cacheprovider

.PHONY: install lint gpu-report test test-all demo aot clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	@touch $(STAMP)

$(STAMP_TEST): $(STAMP)
	$(BIN)/pip install -q -e ".[test]"
	@touch $(STAMP_TEST)

install: $(STAMP_TEST)

lint: $(STAMP_TEST)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Kernel tests run the real Triton code on the CPU under the interpreter, which must be set
# before triton is imported; the rest of the suite runs the torch references (fast path on CPU).
# `make test` is the fast tier (tests marked slow left out: end-to-end examples, kill loops);
# `make test-all` (and .ci/run) runs everything.
test: $(STAMP_TEST) lint
	TRITON_INTERPRET=1 $(PYTEST) -m "not slow" tests/kernels
	$(PYTEST) -m "not slow" tests --ignore=tests/kernels

test-all: $(STAMP_TEST) lint
	TRITON_INTERPRET=1 $(PYTEST) tests/kernels
	$(PYTEST) tests --ignore=tests/kernels

aot: $(STAMP)
	$(BIN)/python -m kernels.aot --arch sm_90

# On a CUDA machine: kernel benchmarks, the 124M trainer (compiled and eager, ours vs torch), the
# CUDA kernel tests and a short sweep, each stage capped (8 minutes in all), written to
# gpu-report/REPORT.md. Such a machine has torch system-wide and maybe no package registry: when
# $(PY) imports torch and triton, the report runs on it from this folder and installs nothing.
# Without CUDA: the static sm_90 report, exit 0 (in .venv, installed as for the tests).
gpu-report:
	@if $(PY) -c "import torch, triton" 2>/dev/null; then \
		PYTHONPATH=$(CURDIR) $(PY) -m bench.gpu_report --out gpu-report; \
	else \
		$(MAKE) --no-print-directory install && $(BIN)/python -m bench.gpu_report --out gpu-report; \
	fi

demo: $(STAMP)
	$(BIN)/python -m examples.demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache gpu-report
