# The two commands the README promises: `make run` and `make test`.
# Everything else (venv, install) happens on demand, so a fresh clone needs nothing but python3.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= deploy/sample.toml

.PHONY: run test unit lint typecheck check-config bench bench-memory clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: every role in one process on the sample config, with the sandbox Flowroute and demo PBX
run: $(STAMP)
	set -a && . ./deploy/sandbox.env && set +a && $(BIN)/smsbridge run --config $(CONFIG) --sandbox

## test: the whole suite (unit, integration against the real RabbitMQ, end to end)
test: $(STAMP)
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

## bench: every benchmark beside its reference on the real RabbitMQ; table + bench/results/latest.json
bench: $(STAMP)
	$(BIN)/python bench/run.py

## bench-memory: the memory benchmark alone, 1,000,000 messages through every role (hours on 2 cores)
bench-memory: $(STAMP)
	$(BIN)/python bench/run.py --only memory --memory-messages 1000000

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy bench

check-config: $(STAMP)
	set -a && . ./deploy/sandbox.env && set +a && $(BIN)/smsbridge check-config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build src/*.egg-info
