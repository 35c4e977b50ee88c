# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv and runs `swapseg demo`
#   make test   creates .venv and runs the test suite
# On machines with a local CPU wheel, torch==2.13.0 is installed first; GPU users
# override it, e.g. `make demo TORCH='torch --index-url https://download.pytorch.org/whl/cu124'`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: venv demo test lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: venv
	$(BIN)/swapseg demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check swapseg tests benchmarks

clean:
	rm -rf $(VENV) swapseg-demo .pytest_cache
