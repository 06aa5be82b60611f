# Two commands do all set-up on a fresh machine: `make main` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: install main test test-fast bench
# GPU nodes whose driver is older than R580: `make install TORCH_CUDA=cu126` (or cu128) installs torch
# built for that CUDA first; the torch==2.14.1 pin accepts it (README "On a GPU node").
TORCH_CUDA ?=
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_CUDA),$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/$(TORCH_CUDA))
	$(BIN)/pip install --quiet -e '.[dev,launchers,metrics,hidiffusion]'
	touch $@

# The main job: the miniature (a digits model crdiff trained at 32x32) offline on the CPU. 1. a short
# ratio search (its preset goes to outputs/presets/pruning, the shipped one in conf/ stays); 2. dense vs CR-Diff at
# 32x32 and four unseen sizes with the miniature metrics; 3. tables and figures in outputs/tables.
main: install
	$(BIN)/python -m crdiff.run experiment=miniature_search search.anneal.iterations=6 prompts.limit=20
	$(BIN)/python -m crdiff.run experiment=miniature
	$(BIN)/python scripts/make_tables.py --results outputs --out outputs/tables

test: install
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (CI runs `make test`, all of them).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python scripts/bench_core.py
