# The two commands of the quick start: `make demo` and `make test`.
# Both create .venv on first use from requirements.txt (pinned) and install drd_jax in editable mode,
# built with the pinned setuptools (no build isolation: nothing is downloaded to build it).
# Everything installed is byte-compiled once, by compileall on every core (pip alone compiles
# file by file, about half of the install's 30 s): with PYTHONDONTWRITEBYTECODE set (as on our
# VMs) nothing else would, and every process of the suite would compile jax, flax and TFDS from
# source again (no compilation at all: suite 318 s -> 402 s).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format bench bench-gpu gpu-wheels clean

# GPU or TPU: `make install JAX_ACCELERATOR=cuda13` (or cuda12, tpu) adds jax's accelerator
# plugin at the pinned jax version (docs/install.md, "On a GPU or TPU").
JAX_ACCELERATOR ?=
JAX_VERSION := $(shell sed -n 's/^jax==//p' requirements.txt)

install: $(STAMP)
ifneq ($(JAX_ACCELERATOR),)
	$(BIN)/python -m pip install --quiet "jax[$(JAX_ACCELERATOR)]==$(JAX_VERSION)"
endif

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.txt
	$(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The main job: Tables 1 and 3 on the embedded synthetic_rgbd data (built on first use) with a
# quarter-width DeepLab-VGG16 on CPU; writes results.md/json, fig4.png, curves.png to $(DEMO_DIR).
# Rerunning reuses finished runs; delete $(DEMO_DIR) to start over.
DEMO_DIR ?= results/demo
demo: $(STAMP)
	$(BIN)/python -m experiments.reproduce --config=experiments/configs/synthetic.py:demo \
		--workdir=$(DEMO_DIR) --table=1,3 --config.data_dir=$(DEMO_DIR)/data --verbosity=-1

lint: $(STAMP)
	$(BIN)/ruff check .

# The suite runs in TEST_WORKERS pytest-xdist processes (2: CI's two cores; 0 = one process),
# each test file whole in one of them (--dist loadfile): a file's tests share module-scoped runs
# and some build on the ones before them (test_reproduce's kd table reuses table 3's runs).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The unit tests alone (ops, layers, models, losses, metrics, config, checkpointing, input
# pipeline...), about 80 s on 2 cores: the tests marked `integration` (they train
# or take a whole train step, run a command in a subprocess, build a dataset; tests/conftest.py
# says which) are left out. `make test` runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not integration"

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m experiments.benchmarks.bench_dconv

# The GPU benchmark, on your GPU machine. It needs a Python with jax and its CUDA plugin (e.g.
# `make install JAX_ACCELERATOR=cuda13` and BENCH_PYTHON=.venv/bin/python, or an environment of
# your own) and the [train] extras (`pip install -e ".[train]"`); torch is optional (the PyTorch
# peer's row is skipped without it). bench-gpu has no install step of its own:
#   make bench-gpu BENCH_PYTHON=.venv/bin/python BENCH_GPU_FLAGS=--output_dir=results/bench_gpu
# Only for a GPU machine without network access: `make gpu-wheels`, on a machine with network,
# downloads into .whl/ (gitignored) the wheels of the data stack and the extras it needs (see
# experiments/benchmarks/gpu_wheels.sh for the list and what it assumes is already installed); copy .whl/
# along with the checkout (a job runner that copies ignored paths only when told needs e.g.
# carry: [".whl"]) and bench-gpu installs them first. E.g., with $OUT a folder that comes back:
#   set -o pipefail; make bench-gpu BENCH_GPU_FLAGS=--output_dir=$OUT 2>&1 | tee $OUT/bench_gpu.log
# bench-gpu installs $(BENCH_WHEELS)/*.whl, if any, into $(BENCH_SITE), puts that on PYTHONPATH
# and runs experiments.benchmarks.bench_gpu (default budget 420 s), which writes bench_gpu.md and
# bench_gpu.json to --output_dir (default results/bench_gpu); bench_gpu.md opens with the targets'
# PASS/FAIL verdicts, and times the D-Conv implementations fast, fast_patches and pallas (pallas:
# Pallas interpret mode on a CPU). A CPU smoke run of the same command with this checkout's .venv
# (BENCH_WHEELS= : nothing to install):
#   make bench-gpu BENCH_PYTHON=.venv/bin/python BENCH_WHEELS= BENCH_GPU_FLAGS="--batch=2 \
#     --height=32 --width_px=32 --network_width=0.0625 --repeats=1 --synthetic_config=tiny \
#     --synthetic_steps=5"
BENCH_PYTHON ?= python3
BENCH_GPU_FLAGS ?=
BENCH_WHEELS ?= .whl
BENCH_SITE ?= /tmp/site

gpu-wheels:
	bash experiments/benchmarks/gpu_wheels.sh .whl

bench-gpu:
	set -e; if [ -n "$(BENCH_WHEELS)" ] && ls $(BENCH_WHEELS)/*.whl >/dev/null 2>&1; then \
		$(BENCH_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
			--upgrade --target $(BENCH_SITE) $(BENCH_WHEELS)/*.whl; \
		export PYTHONPATH=$(BENCH_SITE)$${PYTHONPATH:+:$$PYTHONPATH}; \
	fi; \
	PYTHONUNBUFFERED=1 $(BENCH_PYTHON) -m experiments.benchmarks.bench_gpu $(BENCH_GPU_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
