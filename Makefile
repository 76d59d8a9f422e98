# The two commands of the README:
#   make run    set up .venv if needed, then generate text with SmolLM2 through vLLM on XLA
#   make test   set up .venv if needed, then lint and run the test suite on XLA:CPU
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint

setup:
	@bash scripts/setup.sh $(VENV)

run: setup
	$(PY) examples/generate.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	JAX_PLATFORMS=cpu $(PY) -m pytest -q $(PYTEST_ARGS)
