# The two commands of the quick start: `make demo` and `make test`.
# Both create .venv on first use from requirements.txt (pinned) and install drd_jax in editable mode.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench clean

# GPU or TPU: `make install JAX_ACCELERATOR=cuda13` (or cuda12, tpu) adds jax's accelerator
# plugin at the pinned jax version (README, "Installing on a GPU or TPU").
JAX_ACCELERATOR ?=
JAX_VERSION := $(shell sed -n 's/^jax==//p' requirements.txt)

install: $(STAMP)
ifneq ($(JAX_ACCELERATOR),)
	$(BIN)/python -m pip install --quiet "jax[$(JAX_ACCELERATOR)]==$(JAX_VERSION)"
endif

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
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

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m experiments.bench_dconv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
