# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# torch first, pinned, so pip takes the machine's local CPU wheel instead of
# fetching the newest CUDA build for the `torch>=…` range in pyproject.toml.
TORCH  ?= torch==2.13.0

.PHONY: run test install engines check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" numpy
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) manage.py runstack

# The real engines tests/engines runs against (vLLM on the CPU, llama.cpp's server, and the tiny
# Llama they serve), each in a venv of its own under ~/.cache/anvil-engines (ANVIL_ENGINES_DIR).
# Built once, 15-20 minutes on 2 cores; on a warm machine it checks three stamps and builds nothing.
engines: $(STAMP)
	$(PY) -m tests.support.engines build

test: $(STAMP) engines
	$(PY) -m pytest $(PYTEST_ARGS)

check: $(STAMP)
	$(PY) -m ruff check .
	$(PY) manage.py check

clean:
	rm -rf $(VENV) var
