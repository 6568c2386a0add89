# One entry point for a fresh machine with Python 3.11, 3.12 or 3.13:
#   make test        create .venv, install videoldm with test extras, run the suite
#   make quickstart  create .venv, install, train the toy Video LDM stack, write a video
#   make test-other-python  the suite's PyTorch-free part on a second Python (CI: 3.12)
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

# The metric networks' PyTorch references (tests/metric_references.py) go off the default
# path, without their dependencies: torchvision's PyPI wheel does not import with CPU torch.
METRIC_REFERENCES := torchvision==0.28.0 pytorch-fid==0.3.0 cd-fvd==0.1.1

$(VENV)/.installed: $(VENV)/.core
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/reference $(METRIC_REFERENCES)
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.core
	$(PY) -m videoldm.quickstart --workdir=$(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# The PyTorch reference libraries install only on Python 3.11 here (a CPU build of
# torch is on disk for it), so the second Python runs the tests that need none of them.
OTHER_PYTHON ?= $(firstword $(wildcard /root/.pyenv/versions/3.12*/bin/python) python3.12)
OTHER_VENV ?= .venv-other
FAST_TESTS ?= tests/test_sampling.py tests/test_guidance.py tests/test_diffusion_losses.py \
	tests/test_stage_interface.py tests/test_outputs.py tests/test_chain.py \
	tests/test_config_utils.py tests/test_trainer.py tests/test_pipeline.py \
	tests/test_data.py tests/test_stages.py tests/test_video_source.py tests/test_tiling.py

$(OTHER_VENV)/.installed: setup.py
	$(OTHER_PYTHON) -m venv $(OTHER_VENV)
	$(OTHER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OTHER_VENV)/bin/python -m pip install --quiet -e '.[test-core]'
	touch $@

test-other-python: $(OTHER_VENV)/.installed
	$(OTHER_VENV)/bin/python -m pytest -q $(PYTEST_ARGS) $(FAST_TESTS)

.PHONY: install quickstart test test-other-python
