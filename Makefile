# llmkit developer commands. `make install` then `make test` is all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export LLMKIT_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install test test-slow lint quickstart bench bench-full clean

# The environment, made on first use: `make test` and `make quickstart` on a fresh clone install it first.
INSTALLED := $(VENV)/.installed

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev,slow,export,tune,mlflow]"
	touch $(INSTALLED)

install:
	rm -f $(INSTALLED)
	$(MAKE) $(INSTALLED)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q -x tests

test-slow: $(INSTALLED)
	$(BIN)/python -m pytest -q -m slow tests

lint: $(INSTALLED)
	$(BIN)/ruff check llmkit tests benchmarks
	$(BIN)/ruff format --check llmkit tests benchmarks

quickstart: $(INSTALLED)
	$(BIN)/llmkit pretrain recipes/quickstart.yaml --overwrite
	$(BIN)/llmkit eval recipes/quickstart.yaml --check
	$(BIN)/llmkit predict runs/quickstart --text "The import statement"

bench: $(INSTALLED)
	$(BIN)/python benchmarks/run.py --quick

bench-full: $(INSTALLED)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf runs .pytest_cache
