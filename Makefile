# Two commands set up and check everything on a fresh machine: `make setup`, then `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# Tests never touch the network: a missing local file must fail fast, not after a hub timeout.
TESTENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

.PHONY: setup lock test test-fast memory peak-memory gpu-check gpu-table tables bench clean

setup: $(BIN)/.installed

# The exact torch build is chosen here, not in the package metadata (which declares the tested range): the CPU
# wheel of 2.13.0, which pip takes from this machine's disk. On a GPU machine: make setup TORCH="torch==2.13.0
# --index-url https://download.pytorch.org/whl/cu128" (or any build in the declared range).
TORCH   ?= torch==2.13.0

# Every other package at the version in constraints.txt, the set that `make test` passed with (the metadata keeps
# ranges, so `pip install gnlorp` still resolves freely).
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[runner,slurm,offline,test]" "$(firstword $(TORCH))"
	touch $@

# constraints.txt anew: the newest versions the metadata admits, resolved in a scratch venv; then `make clean test`.
lock:
	rm -rf .lockvenv && $(PY) -m venv .lockvenv
	.lockvenv/bin/pip install -q $(TORCH)
	.lockvenv/bin/pip install -q -e ".[runner,slurm,offline,test]" "$(firstword $(TORCH))"
	{ sed -n '1,2p' constraints.txt; .lockvenv/bin/pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lockvenv

# two workers, each taking whole test files (a file's module fixtures run once); the slowest tests are listed
test: setup
	$(TESTENV) $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

# the unit tests but the slow ones (tests/unit, under a minute on two workers); `make test` adds the rest and tests/e2e
test-fast: setup
	$(TESTENV) $(BIN)/python -m pytest -q -n 2 tests/unit -m "not slow"

# Optimizer-state memory of every method for LLaMA 60M..7B (analytic, checked against real tensors in tests).
memory: setup
	$(BIN)/python -m gnlorp.memory

# Measured peak RSS of LLaMA-20M/60M training (every method, fp32 CPU) against gnlorp/memory_model.py: results/memory/peak_*.json
peak-memory: setup
	$(TESTENV) OMP_NUM_THREADS=1 $(BIN)/python -m gnlorp.bench.peak_memory

# Every CUDA path once (<= 8 min on one GPU): results/gpu/*.json; on a CPU a tiny dry run (also in make test)
gpu-check: setup
	$(TESTENV) $(BIN)/python -m gnlorp.gpu_check

# The equal-tuning protocol on one GPU in <= 9 min (GLUE on full train sets, C4 LLaMA-60M): the plan and its estimate
# first, then results/gpu_table/<device>/ and its tables/; on a CPU a tiny dry run into a temporary folder (also in
# make test). GPU_TABLE="--plan-only" (or --tasks, --epochs, --c4-steps); RoBERTa-base needs the hub, which TESTENV
# turns off: python -m gnlorp.gpu_table --model roberta-base.
gpu-table: setup
	$(TESTENV) $(BIN)/python -m gnlorp.gpu_table $(GPU_TABLE)

# results/*.json -> results/tables/*.md, *.tex and plots, and results/README.md from gnlorp/tables/results_readme.md
# (deterministic: same results, same bytes)
tables: setup
	$(BIN)/python -m gnlorp.tables

# optimizer-step, projector, weight-norm, end-to-end and C4-loader benchmarks; prints tables, writes results/bench/*.json
bench: setup
	$(BIN)/python -m gnlorp.bench

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
