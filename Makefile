# The two commands of the quick start: `make run` and `make test`. Only Python 3.11+ is needed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PYTEST_ARGS ?=
# `make run MACHINES=qemu [BOOT_MODE=uefi|mixed]`: the lab machines are QEMU VMs (2 of them) instead of simulated
MACHINES  ?= sim
BOOT_MODE ?= bios
LAB       ?= $(if $(filter qemu,$(MACHINES)),2,8)

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/bmd --config config/dev.toml db upgrade
	$(BIN)/bmd --config config/dev.toml serve --lab $(LAB) --machines $(MACHINES) --boot-mode $(BOOT_MODE)

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy bmd

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
