# One entry point for a fresh machine with only Python 3.11:
#   make test        create .venv, install videoldm with test extras, run the suite
#   make quickstart  create .venv, install, train the toy Video LDM stack, write a video
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2 --dist loadfile

WORKDIR ?= /tmp/videoldm_quickstart

$(VENV)/.core: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(VENV)/.core
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.core
	$(PY) -m videoldm.quickstart --workdir=$(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

.PHONY: install quickstart test
