# One-command set-up: `make test` and `make demo` build .venv themselves when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.iabn-zoo-setup

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet "setuptools>=68" wheel setuptools_scm ninja
	SETUPTOOLS_SCM_PRETEND_VERSION=1.1.0 $(PY) -m pip install --quiet --no-build-isolation inplace-abn==1.1.0
	$(PY) -m pip install --quiet -e ".[test,demo,export,logs,hub]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile tests

demo: $(STAMP)
	$(PY) -m iabn_zoo.demo

bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
