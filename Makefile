# The two commands in the README: `make run` and `make test`. Everything else is a step of them.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: run test test-fast install services db lint lock bench clean chromium sql-diff

run: install services db
	$(BIN)/ebs db seed --if-empty
	scripts/run.sh

# The whole suite with Redis as the broker, then the pipeline and fault tests again with
# RabbitMQ (started if it does not answer), each run in a vhost of its own (tests/conftest.py).
AMQP_TEST_BROKER ?= amqp://guest:guest@127.0.0.1:5672/
BROKER_TESTS := tests/test_pipeline.py tests/test_drain.py tests/test_faults.py \
	tests/test_smoke_pipeline.py
test: install services chromium
	$(BIN)/pytest $(PYTEST_ARGS)
	CELERY_BROKER_URL=$(AMQP_TEST_BROKER) scripts/ensure-services.sh
	TEST_CELERY_BROKER_URL=$(AMQP_TEST_BROKER) $(BIN)/pytest -q $(BROKER_TESTS)

# The pure tests (marked fast: tokens, parsers, rules, the line and its pace, the coalescer, the
# released SQL), in seconds and with no service running; CI runs them first (.ci/run).
test-fast: install
	TEST_CELERY_BROKER_URL= $(BIN)/pytest -q -m fast $(PYTEST_ARGS)

install: $(VENV)/.installed

# From the lock (requirements/, docs/SETUP.md "Dependencies"), then the project itself without
# resolving again; a changed lock or pyproject.toml installs again.
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Re-compile the lock from pyproject.toml: one file per install set (base: the image; dev: make
# install; bench: make bench). Keeps the locked versions unless told:
# make lock LOCK_ARGS=--upgrade, or LOCK_ARGS="--upgrade-package fastapi".
LOCK := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--quiet --custom-compile-command "make lock" $(LOCK_ARGS)
lock: install
	$(LOCK) -o requirements/base.txt
	$(LOCK) --extra dev -o requirements/dev.txt
	$(LOCK) --extra dev --extra bench -o requirements/bench.txt

# The live page's browser test drives Debian's Chromium; Playwright's own download is blocked.
# As root, install it with apt (README, "Tests"); otherwise say what to do and go on: that one
# test then fails, naming the package.
chromium:
	@test -x /usr/bin/chromium || if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium with apt-get, for the live page's browser test"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
	  echo "note: /usr/bin/chromium is missing and this is not root: run 'sudo apt-get install chromium'," \
	    "or tests/test_live_page.py will fail" >&2; \
	fi

services: install
	scripts/ensure-services.sh

db: install services
	$(BIN)/ebs db create
	$(BIN)/ebs db upgrade

# The flash-sale benchmark (docs/BENCHMARKS.md): its own database ebs_bench and Redis db 9.
# Smaller run: make bench BENCH_ARGS="-c 50 -n 2000 -s 500"
# The waitlist variant (promotion latency): make bench BENCH=waitlist
# 50 open dashboards against none, one run: make bench BENCH=dashboards
# Webhooks (a sale with two endpoints against the same sale without): make bench BENCH=webhooks
# Holds: lateness of 10,000 expiring in one second, the sale with holds on vs off: BENCH=holds
BENCH ?= flash_sale
bench: $(VENV)/.bench-installed services
	$(BIN)/python -m bench.$(BENCH) $(BENCH_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed requirements/bench.txt
	$(BIN)/pip install -q --require-hashes -r requirements/bench.txt
	touch $@

# One stored procedure's change between two of its files: make sql-diff FN=process_event_queue
# (the two newest), or FROM=0005 TO=0008 (each the newest file at or before that revision).
sql-diff:
	@FN="$(FN)" FROM="$(FROM)" TO="$(TO)" scripts/sql-diff.sh || [ $$? -eq 1 ]

# Run by CI (.ci/run) beside `make test`; settings in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .run .pytest_cache .ruff_cache .mypy_cache
