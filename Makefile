# The two commands a newcomer runs: `make demo` and `make test`. Both build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m graphprune.demo

test: $(STAMP)
	$(BIN)/python -m pytest tests graphprune zoo_tests -m "not slow" -q

zoo: $(STAMP)
	$(BIN)/python -m pytest zoo_tests -m "timm or hf" -q -p no:cacheprovider --zoo-status docs/zoo_status.md

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python bench/bench_vs_torch_pruning.py

.PHONY: venv demo test zoo bench
