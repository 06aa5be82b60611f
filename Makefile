# Two commands do all set-up on a fresh machine: `make main` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: install main test bench
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,launchers,metrics]'
	touch $@

main: install
	$(BIN)/python -m crdiff.run experiment=smoke

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/bench_core.py
