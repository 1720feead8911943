# The two commands a newcomer runs: `make demo` and `make test`. Both build $(VENV) themselves, with the
# known-good versions of constraints.txt (`make lock` renews them deliberately).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m graphprune.demo

test: $(STAMP)
	$(BIN)/python -m pytest tests graphprune zoo_tests -m "not slow" -q

zoo: $(STAMP)
	$(BIN)/python -m pytest zoo_tests -m "timm or hf or torchvision or fuzz" -q -p no:cacheprovider --zoo-status docs/zoo_status.md

bench: $(STAMP)
	$(PIP) -e ".[test,bench]"
	$(BIN)/python bench/bench_vs_torch_pruning.py

bench-big: $(STAMP)
	$(PIP) -e ".[test,bench]"
	$(BIN)/python bench/bench_big.py

bench-quality: $(STAMP)
	$(PIP) -e ".[test,bench]"
	$(BIN)/python -m bench.quality

bench-depth: $(STAMP)
	$(PIP) -e ".[test,bench]"
	$(BIN)/python bench/depth_vs_width.py

# Rebuild constraints.txt from pyproject.toml's ranges in a throwaway venv (then run make test and the benches).
lock:
	rm -rf /tmp/graphprune-lock && PIP_CONSTRAINT= $(PY) -m venv /tmp/graphprune-lock
	PIP_CONSTRAINT= /tmp/graphprune-lock/bin/pip install -q --disable-pip-version-check ".[test,bench]"
	{ grep '^#' constraints.txt; /tmp/graphprune-lock/bin/pip freeze --all --exclude-editable | \
	  grep -v -i -E '^(graphprune|nvidia-|cuda-)'; } > constraints.new && mv constraints.new constraints.txt

.PHONY: venv demo test zoo bench bench-big bench-quality bench-depth lock
