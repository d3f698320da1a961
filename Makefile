# Two commands set everything up on a machine that has python3 and pip:
#   make demo   -- create .venv, install, run the main job (examples/quickstart.py)
#   make test   -- create .venv, install, run ruff, mypy and the whole test suite
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; override (e.g. TORCH_SPEC='torch') where another build is wanted.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,examples,lightning]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python examples/quickstart.py $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check optuna_isbo tests examples benchmarks
	$(BIN)/mypy optuna_isbo

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
