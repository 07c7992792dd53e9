# The two commands the README promises: `make run` and `make test`.
# Everything else (venv, install) happens on demand, so a fresh clone needs nothing but python3.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= deploy/sample.toml

LOCK   := requirements/dev.lock
RUNS   ?= 1

.PHONY: run test test-loaded unit fuzz lint typecheck check-config bench bench-memory bench-media faults lock clean

# A fresh venv from the lock whenever the lock changes: exactly the locked versions, each checked
# against its hash, nothing resolved at install time (requirements/README.md says why).
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

## run: every role in one process on the sample config, with the sandbox Flowroute and demo PBX
run: $(STAMP)
	set -a && . ./deploy/sandbox.env && set +a && $(BIN)/smsbridge run --config $(CONFIG) --sandbox

## test: the whole suite (unit, integration against the real RabbitMQ, end to end)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## test-loaded: the whole suite while one CPU hog per core keeps the host busy (RUNS=3 for three in a row)
test-loaded: $(STAMP)
	$(BIN)/python tests/loaded.py --runs $(RUNS) -- $(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

## fuzz: the long hostile-input run, 10,000 bodies at the receiver and 10,000 requests at the outbound
## stage (make test runs 400 of each); FUZZ_SEED=n replays a run
FUZZ_BODIES ?= 10000
FUZZ_SEED   ?= 1616
fuzz: $(STAMP)
	SMSBRIDGE_FUZZ_BODIES=$(FUZZ_BODIES) SMSBRIDGE_FUZZ_SEED=$(FUZZ_SEED) $(BIN)/python -m pytest -q -s \
	  tests/integration/test_fuzz.py tests/unit/test_hostile_input.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench faults

## bench: every benchmark beside its reference on the real RabbitMQ; table + bench/results/latest.json
bench: $(STAMP)
	$(BIN)/python bench/run.py

## faults: a 3-node RabbitMQ cluster, PostgreSQL and each role as a process, each on a simulated host (a
## network namespace; needs root, ip, nft), under load, one fault per scenario, a table of figures beside
## their targets (faults/README.md); about 7 min on 2 shared cores
faults: $(STAMP)
	$(BIN)/python -m faults.run

## bench-memory: the memory benchmark alone, 1,000,000 messages through every role (hours on 2 cores)
bench-memory: $(STAMP)
	$(BIN)/python bench/run.py --only memory --memory-messages 1000000

## bench-media: 200 MMS of 5 MB through the inbound stage: RSS flat? MB/s beside a bare aiohttp download
bench-media: $(STAMP)
	$(BIN)/python bench/bench_media.py

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/mypy faults

check-config: $(STAMP)
	set -a && . ./deploy/sandbox.env && set +a && $(BIN)/smsbridge check-config $(CONFIG)

## lock: re-resolve requirements/*.lock from pyproject.toml and requirements/build.in (review, then commit)
lock:
	$(PYTHON) -m venv --clear .lockvenv
	.lockvenv/bin/python -m pip install --quiet pip-tools==7.6.2
	CUSTOM_COMPILE_COMMAND="make lock" .lockvenv/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o requirements/runtime.lock pyproject.toml requirements/build.in
	CUSTOM_COMPILE_COMMAND="make lock" .lockvenv/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links --extra dev -c requirements/runtime.lock \
	  -o requirements/dev.lock pyproject.toml requirements/build.in
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build src/*.egg-info
