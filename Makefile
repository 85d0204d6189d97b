# One command each, on a fresh machine: `make demo` and `make test` build .venv themselves.
# The venv is rebuilt only when pyproject.toml changes (the stamp file records that).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.embedshare-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv check test test-fast demo bench clean

venv: $(STAMP)

# torch==2.13.0 first: it is the CPU build this machine keeps on disk; any other version
# (asked for by sentence-transformers' open range) would pull a multi-GB CUDA build.
# local-torch is here for the bench's torch column and the ONNX-equals-torch test; the service
# (`local` = ONNX Runtime) does not use it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[local,local-torch,openai,http,langchain,ray,bench,dev]'
	touch $(STAMP)

# Lint, format, types and layers, as configured in pyproject.toml (the same as .pre-commit-config.yaml).
CHECKED := src bench tests
check: $(STAMP)
	$(VENV)/bin/ruff check $(CHECKED)
	$(VENV)/bin/ruff format --check $(CHECKED)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not model and not slow"

demo: $(STAMP)
	$(VENV)/bin/embedshare demo --workers 25 --tasks 2000

# Every design of the seed's note and embedshare, 1/8/25 workers, three models, the index sweep.
bench: $(STAMP)
	$(VENV)/bin/embedshare bench --out bench/results

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
