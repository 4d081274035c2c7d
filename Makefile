# `make test` and `make demo` create .venv on first use and install vidsparse into it with the pinned
# versions of constraints.txt (torch 2.13.0 CPU build on these machines; never a multi-GB CUDA build).
# Where pip finds torch only on PyPI (whose Linux wheel is the CUDA build with its nvidia-* wheels, GBs), take
# the CPU build from PyTorch's own CPU wheel index: make test TORCH_INDEX=<that index's URL>
PYTHON ?= python3
TORCH_INDEX ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo env clean

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/vidsparse demo

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
