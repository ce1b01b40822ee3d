# One venv, installed exactly from requirements.lock; every target below builds on it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --universal \
	--python-version 3.11 --quiet -o $(LOCK)

.PHONY: install run test lint typecheck pytest bench chaos lock upgrade clean

# A changed lock rebuilds the venv from nothing, so it holds exactly what the lock says.
# pip's own output goes to a log, shown only when the install fails.
$(STAMP): $(LOCK) pyproject.toml
	@echo "Installing $(LOCK) into $(VENV) (log: $(VENV)/install.log)"
	@$(PYTHON) -m venv --clear $(VENV)
	@{ $(BIN)/python -m pip install --require-hashes --no-deps -r $(LOCK) && \
	   $(BIN)/python -m pip install --no-deps --no-build-isolation -e . ; } > $(VENV)/install.log 2>&1 || \
	   { tail -n 40 $(VENV)/install.log; echo "install failed; the whole log is $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@$(BIN)/newsroom up --demo

lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench
	$(BIN)/ruff format --check shared services tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy shared services

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

chaos: $(STAMP)
	$(BIN)/pytest -m chaos tests/chaos

bench: $(STAMP)
	$(BIN)/python -m bench

# After editing pyproject.toml's dependencies: pin what changed, keep every other pin.
lock: $(STAMP)
	$(UV_COMPILE)

# A deliberate upgrade of every pin; commit the new lock on its own once `make test` passes.
upgrade: $(STAMP)
	$(UV_COMPILE) --upgrade

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
