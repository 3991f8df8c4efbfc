# Two commands matter: `make demo` (a local primary with replicas) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit proto bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kevo-repl demo

lint: $(STAMP)
	$(BIN)/ruff check kevo_repl tests bench
	$(BIN)/ruff format --check kevo_repl tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

proto: $(STAMP)
	$(BIN)/python -m kevo_repl.protogen

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

soak: $(STAMP)  # random faults under load; SOAK_ARGS="--seconds 120" to shorten
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
