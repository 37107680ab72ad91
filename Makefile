# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUM    := $(shell cksum pyproject.toml | cut -d' ' -f1)
# Two installs: `make run` takes only what running Anvil needs (~1.2 GB, most of it torch);
# `make test` adds the test, training and baseline extras (lm-eval, playwright, transformers...).
RUN_STAMP  := $(VENV)/.installed-run-$(SUM)
TEST_STAMP := $(VENV)/.installed-test-$(SUM)
# torch first, pinned, so pip takes the machine's local CPU wheel instead of
# fetching the newest CUDA build for the `torch>=…` range in pyproject.toml.
TORCH  ?= torch==2.13.0
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test install engines check clean

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)" numpy
	$(PIP) -e .
	rm -f $(VENV)/.installed-run-*
	touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(PIP) -e '.[test,dev]'
	rm -f $(VENV)/.installed-test-*
	touch $@

install: $(RUN_STAMP)

run: $(RUN_STAMP)
	$(PY) manage.py runstack

# The real engines tests/engines runs against (vLLM on the CPU, llama.cpp's server, and the tiny
# Llama they serve), each in a venv of its own under ~/.cache/anvil-engines (ANVIL_ENGINES_DIR).
# Built once, 15-20 minutes on 2 cores; on a warm machine it checks three stamps and builds nothing.
engines: $(TEST_STAMP)
	$(PY) -m tests.support.engines build

test: $(TEST_STAMP) engines
	$(PY) -m pytest $(PYTEST_ARGS)

check: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) manage.py check

clean:
	rm -rf $(VENV) var
