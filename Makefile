# Two commands do all the set-up on a fresh machine:
#   make demo   runs the main job
#   make test   runs the test suite
# Each creates the virtual environment it needs (.venv) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,lm_eval]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/nanoseek demo

test: $(VENV)/.installed
	$(PY) -m pytest tests

bench: $(VENV)/.installed
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
