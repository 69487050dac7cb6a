# Two commands do all the set-up on a fresh machine:
#   make train   a short real training run (local Ray, MLflow in sqlite:///mlflow.db)
#   make test    the test suite
PYTHON ?= python3.11
TORCH ?= torch==2.13.0
CONFIG ?= configs/inverted_pendulum.yaml
ARGS ?= --set train.stop_at_return=1000
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test bench clean

$(BIN)/umpo: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/umpo

train: $(BIN)/umpo
	$(BIN)/umpo train $(CONFIG) $(ARGS)

test: $(BIN)/umpo
	$(BIN)/python -m pytest -q tests

bench: $(BIN)/umpo
	$(BIN)/python benchmarks/ensemble.py
	$(BIN)/python benchmarks/learning.py --env inverted_pendulum --seeds 0 --steps 5000
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) mlruns mlflow.db runs .pytest_cache
