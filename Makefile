# One-command entry points (see README.md). `make demo` and `make test` set everything up first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench lint

setup: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/setup.sh "$(PYTHON)" "$(VENV)"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/conceptscope demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/precompute_overhead.py
	$(PY) bench/live_latency.py
	$(PY) bench/featurevis_vs_lucent.py
