# The two commands of the README: `make test` and `make demo`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of torch, installed first: a bare `torch` (or a range past it) pulls GBs of CUDA packages.
TORCH_PIN := torch==2.13.0
# Extra pip arguments for the torch step only (e.g. a CPU wheel index where the default index serves CUDA).
TORCH_PIP_ARGS ?=
STAMP  := $(VENV)/.installed

.PHONY: test demo ablations install clean test-fast

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Extra arguments for `safe demo`, e.g. make demo DEMO_ARGS=--fresh
DEMO_ARGS ?=

demo: $(STAMP)
	$(VENV)/bin/safe demo $(DEMO_ARGS)

# The Stage A ablation grid on the demo's run (after `make demo`): safe ablate, about 5 minutes on 2 cores.
ablations: $(STAMP)
	$(VENV)/bin/safe ablate --run-dir runs/demo

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
