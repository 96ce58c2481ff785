# The commands the README names. Each target sets up the virtualenv first (once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint data train results bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "switchboard needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/switchboard demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

data: setup
	$(BIN)/switchboard data build

train: setup
	$(BIN)/switchboard train

results: setup
	$(BIN)/switchboard results

bench: setup
	$(BIN)/switchboard bench

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
