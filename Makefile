# Two commands: `make demo` (set up, then train the default model) and `make test` (set up, then test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: demo test test-portable test-gpu test-slow test-zoo docs lint bench setup data graphviz browser clean

demo: setup data graphviz
	$(BIN)/branchgraph train --preset fast

# Two pytest workers of one thread each: the suite's small tensors, subprocesses and Python overhead use both cores
# better that way than one worker with two threads (5 min 40 s against 11 min 13 s on a 2-core box); tests marked
# xdist_group share a worker, and so a module fixture.
test: setup data graphviz browser
	$(BIN)/ruff check src tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup

# The suite in a random order, then the verification-heavy tests again on another processor class's kernels
# (oneDNN limited to SSE4.1, ATen's default ISA; the whole suite takes over an hour that way): what a fixed order or one
# CPU would hide. Not in CI, which keeps the default order.
test-portable: setup data graphviz
	$(BIN)/python -m pytest -q --random-order-bucket=module
	ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q --random-order-bucket=module \
		tests/test_passes.py tests/test_branches.py tests/test_parallel.py tests/test_tune.py

# The CUDA path on a GPU (benchmarks/gpu_check.py): GPU tests, passes on CUDA, streams, a plan's CUDA peak, an AMP
# epoch, torch.compile; writes docs/results/gpu-<isa>.md. Without CUDA it says so and exits 0; CI never runs it.
test-gpu: setup data
	$(BIN)/python benchmarks/gpu_check.py --results

test-slow: setup data
	$(BIN)/python -m pytest -q -m slow

# Not part of `make test`: summary, optimize (eval, train), branches and memory over 28 timm models, one row per model
# (benchmarks/zoo.py; about 30 minutes). ZOO_PYTHON needs timm, with a torchvision built for its torch, and
# branchgraph installed (pip install -e '.[timm]').
ZOO_PYTHON ?= $(BIN)/python
test-zoo: setup
	$(ZOO_PYTHON) benchmarks/zoo.py

# The documentation site (mkdocs-material; the API reference generated from the docstrings by mkdocstrings), built
# strict: a broken reference or link fails. The site goes to site/.
docs: setup
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[docs]'
	$(BIN)/python -c "from branchgraph.cli import reference; open('docs/reference/cli.md', 'w').write(reference())"
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet --site-dir site

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

# Debian's graphviz provides the `dot` program that renders `branchgraph graph` pictures.
graphviz:
	@if command -v dot >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "graphviz: installing Debian's graphviz (the dot program)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
		|| { echo "error: apt-get could not install graphviz; run 'sudo apt-get install graphviz'" >&2; exit 2; }; \
	else \
		echo "error: the Graphviz program dot is missing and this user cannot install it; run 'sudo apt-get install graphviz'" >&2; \
		exit 2; \
	fi

# Long (about 35 minutes on 2 cores, torch.compile included); every benchmark writes docs/results/<name>-<isa>.{json,md}
# (the data, and the page generated from it, headed by the machine and the command).
bench: setup data
	$(BIN)/python benchmarks/bench_train.py --results
	$(BIN)/python benchmarks/bench_memory.py --results
	$(BIN)/python benchmarks/bench_heap.py --results
	$(BIN)/python benchmarks/bench_revnet.py --results
	$(BIN)/python benchmarks/bench_branch_stats.py --results
	$(BIN)/python benchmarks/bench_parallel.py --results
	$(BIN)/python benchmarks/bench_results.py
	$(BIN)/python benchmarks/profile_engines.py --results

# Debian's chromium and chromium-driver run the report pages' tests in a real (headless) browser; without them those
# tests skip, so a machine that cannot install them is told what to run and the target goes on.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "browser: installing Debian's chromium and chromium-driver (the report page tests)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "note: apt-get could not install chromium; run 'sudo apt-get install chromium chromium-driver' (the browser tests skip without it)" >&2; \
	else \
		echo "note: chromium is missing; run 'sudo apt-get install chromium chromium-driver' to run the browser tests (they skip without it)" >&2; \
	fi

clean:
	rm -rf $(VENV) runs .pytest_cache
