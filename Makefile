# Set-up and checks. `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Python 3.12 or newer: the first that exists of these (pyenv installs count too).
PYTHON ?= $(shell for p in python3.14 python3.13 python3.12 $$(ls -d /root/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null) python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { command -v $$p; break; }; done)
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest bench bench-smoke clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.12 or newer is needed (zarr >= 3.2 needs it)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m zchunk.ops._kernels  # numba's kernels compiled now, not in the first run
	$(BIN)/python -m zchunk.ops._filter_stream  # and the filters' kernels
	touch $(STAMP)

demo: install
	$(BIN)/zchunk demo zchunk-demo

lint: install
	$(BIN)/ruff check zchunk tests benchmarks
	$(BIN)/ruff format --check zchunk tests benchmarks

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python benchmarks/run_all.py

bench-smoke: install
	$(BIN)/python benchmarks/run_all.py --smoke --out /tmp/zchunk-RESULTS-smoke.md

clean:
	rm -rf $(VENV) zchunk-demo .pytest_cache .mypy_cache .ruff_cache
