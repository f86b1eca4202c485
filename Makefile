# Two commands: `make demo` (set up, then train the default model) and `make test` (set up, then test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench setup data clean

demo: setup data
	$(BIN)/branchgraph train --preset fast

test: setup data
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

test-slow: setup data
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests benchmarks

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist puts the IDX files in /usr/share/datasets/fashion-mnist.
data:
	@if [ -n "$$BRANCHGRAPH_DATA" ] && [ -f "$$BRANCHGRAPH_DATA/train-images-idx3-ubyte.gz" ]; then \
		echo "Fashion-MNIST: using $$BRANCHGRAPH_DATA"; \
	elif [ -f "$(DATA_DIR)/train-images-idx3-ubyte.gz" ]; then \
		echo "Fashion-MNIST: found in $(DATA_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| { echo "error: apt-get could not install dataset-fashion-mnist; run 'sudo apt-get update && sudo apt-get install dataset-fashion-mnist', or set BRANCHGRAPH_DATA to a folder with the four IDX .gz files" >&2; exit 2; }; \
	else \
		echo "error: Fashion-MNIST is not installed and this user cannot install it. Run 'sudo apt-get update && sudo apt-get install dataset-fashion-mnist', or set BRANCHGRAPH_DATA to a folder with the four IDX .gz files" >&2; \
		exit 2; \
	fi

bench: setup data
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
