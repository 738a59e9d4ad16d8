# Two entry points for users: `make demo` and `make test`. Both create .venv and install segpipe into it.
# On machines without `nvidia-smi` the CPU build of torch is installed first, so pip does not fetch a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0

.PHONY: demo test bench bench-scale install clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "no GPU found: installing the CPU build of torch ($(TORCH_CPU))"; \
		$(PY) -m pip install --disable-pip-version-check -q $(TORCH_CPU) || $(PY) -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test,onnx]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/segpipe demo --workspace demo_workspace

# side-by-side benchmark against nnU-Net v2 (about an hour on 2 CPU cores); options: make bench BENCH_ARGS="--help"
bench: $(VENV)/.installed
	$(PY) benchmarks/run_benchmark.py $(BENCH_ARGS)

# scale benchmark against nnU-Net v2 on the head-and-neck CT set, N = 5, 10, 20 cases (under an hour on 2 CPU cores;
# BENCH_ARGS=--quick: a few minutes); options: make bench-scale BENCH_ARGS="--help"
bench-scale: $(VENV)/.installed
	$(PY) benchmarks/scale_benchmark.py $(BENCH_ARGS)

# quality gates first (lint + import order, types: about 30 s), then the suite; headless Chromium for the report's
# browser test is installed from Debian's packages when missing (.ci/ensure_chromium never fails: without it the
# test is skipped, saying why)
test: $(VENV)/.installed
	$(VENV)/bin/ruff check segpipe tests benchmarks
	$(VENV)/bin/mypy
	bash .ci/ensure_chromium
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) demo_workspace
