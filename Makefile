# The two commands in the README: `make run` and `make test`. Everything else is a step of them.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: run test install services db lint bench clean chromium

run: install services db
	$(BIN)/ebs db seed --if-empty
	scripts/run.sh

test: install services chromium
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The live page's browser test drives Debian's Chromium; Playwright's own download is blocked.
chromium:
	@test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

services: install
	scripts/ensure-services.sh

db: install services
	$(BIN)/ebs db create
	$(BIN)/ebs db upgrade

# The flash-sale benchmark (docs/BENCHMARKS.md): its own database ebs_bench and Redis db 9.
# Smaller run: make bench BENCH_ARGS="-c 50 -n 2000 -s 500"
bench: $(VENV)/.bench-installed services
	$(BIN)/python -m bench.flash_sale $(BENCH_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .run .pytest_cache .ruff_cache .mypy_cache
