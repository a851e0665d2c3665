# happysad: `make demo` runs the whole pipeline on the built-in synthetic faces; `make test` runs the tests.
# Both create the virtual environment they need (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= work/demo
PORT ?= 8501

.PHONY: setup demo test lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

demo: setup
	$(BIN)/happysad run --workdir $(WORKDIR)
	$(BIN)/python -m pipeline.demo --workdir $(WORKDIR) --port $(PORT)

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/run.py --output benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) work .pytest_cache
