# vxflood: everything runs from a local virtual environment the Makefile builds.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: all venv test unit integration e2e lint typecheck check bench fuzz demo clean

all: test

# The daemons and their libraries only: all that `make demo` needs.
$(BIN)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# Plus the test and lint toolchain (pytest, hypothesis, schemathesis, ruff, mypy).
$(BIN)/.installed: $(BIN)/.base
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

## Whole suite: unit, integration (SQLite + PostgreSQL), e2e (root, namespaces).
test: venv
	$(BIN)/pytest tests

unit: venv
	$(BIN)/pytest tests/unit

integration: venv
	$(BIN)/pytest tests/integration

e2e: venv
	$(BIN)/pytest tests/e2e

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

check: lint typecheck
	$(BIN)/python -m vxflood.migrations.check

bench: venv
	$(BIN)/python -m tests.benchmarks.run_all

## Fuzz every decoder (atheris); e.g. make fuzz FUZZ_ARGS="--runs 1000000".
FUZZ_ARGS ?= --seconds 60
fuzz: venv
	$(BIN)/python -m tests.benchmarks.bench_fuzz $(FUZZ_ARGS)

demo:
	@if [ "$$(id -u)" != "0" ]; then echo "make demo builds network namespaces and needs root: run it as root (sudo make demo)"; exit 1; fi
	@$(MAKE) --no-print-directory $(BIN)/.base
	$(BIN)/python contrib/lab/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
