# The two commands: `make demo` (the pipeline on generated data) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= out/demo
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONWARNINGS := ignore::FutureWarning,ignore::DeprecationWarning

.PHONY: demo test lint venv clean

venv: $(STAMP)

# Finds a Python 3.10 (PATH, then pyenv) and installs the pinned stack once.
$(STAMP): requirements.txt constraints.txt setup.py
	@py=$$(scripts/find-python310); \
	 [ -x $(PY) ] || $$py -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip==26.3" "setuptools==84.2.1" "wheel==0.48.0"
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

# Generates the default dataset, runs the whole pipeline, then asks the pushed model for user 0's top 10.
demo: $(STAMP)
	$(VENV)/bin/animerec data synth --out $(DEMO_DIR)/data
	$(VENV)/bin/animerec data summary --data-dir $(DEMO_DIR)/data
	$(VENV)/bin/animerec run --data-dir $(DEMO_DIR)/data --output-dir $(DEMO_DIR)
	$(VENV)/bin/animerec recommend --user 0 -k 10 --model-dir $(DEMO_DIR)/serving

test: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
	$(PY) -m pytest -v -n 2 --dist loadfile --no-loadscope-reorder --durations=10 tests

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf out .pytest_cache
