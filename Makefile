# One venv, one install; every target below builds on it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck pytest bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/newsroom up --demo

lint: $(STAMP)
	$(BIN)/ruff check shared services tests $(wildcard bench)
	$(BIN)/ruff format --check shared services tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy shared services

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

chaos: $(STAMP)
	$(BIN)/pytest -m chaos tests/chaos

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
