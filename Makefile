# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv and runs `swapseg demo`
#   make test   creates .venv and runs the test suite
# On machines with a local CPU wheel, torch==2.13.0 is installed first; GPU users
# override it, e.g. `make demo TORCH='torch --index-url https://download.pytorch.org/whl/cu124'`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# Integrations installed with the tests (EXTRAS= for none). The installed torch is pinned as a
# constraint so that no extra pulls another torch build; nnunetv2 pulls torchvision, which is
# removed again where it cannot load (a CPU-only torch), since it breaks `import lightning`.
EXTRAS ?= nnunet,lightning,monai
comma := ,
BIN := $(VENV)/bin

.PHONY: venv demo test lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch.txt
	$(BIN)/pip install -q -e '.[test$(if $(EXTRAS),$(comma)$(EXTRAS))]' -c $(VENV)/torch.txt
	$(BIN)/python -c "import torchvision" 2>/dev/null || $(BIN)/pip uninstall -y -q torchvision
	$(BIN)/python -c "import torch; print('torch', torch.__version__)"
	touch $@

demo: venv
	$(BIN)/swapseg demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check swapseg tests benchmarks

clean:
	rm -rf $(VENV) swapseg-demo .pytest_cache
