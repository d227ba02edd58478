# `make demo` and `make test` create .venv on first use: torch first (the CPU build on disk), then the rest.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.focusseg-installed
TORCH  ?= torch==2.13.0

.PHONY: demo test test-slow lint docs bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	# nnU-Net's networks (the nnunet extra) without their metadata's timm/torchvision, which the CPU torch cannot import
	$(PY) -m pip install -q --no-deps "dynamic-network-architectures>=0.3"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/focusseg demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow" -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
