# fedgov: one command for everything.
#   make run    the whole system on this machine (web, Celery worker and beat, Redis, agents)
#   make test   the whole suite (SQLite, then the database tests again on PostgreSQL)
#   make bench  every benchmark, printed as tables next to the peers

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BENCH_VENV := .venv-bench
SYSTEM_TEST_PACKAGES := redis-server postgresql chromium fonts-dejavu-core
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test test-sqlite test-postgres bench lint venv system-packages clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

system-packages:
	scripts/system-packages.sh $(SYSTEM_TEST_PACKAGES)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: system-packages venv lint
	$(MAKE) test-sqlite
	$(MAKE) test-postgres

test-sqlite: venv
	$(VENV)/bin/pytest -p no:cacheprovider -n 2 --dist loadgroup -q

# The database-level suites again on a real PostgreSQL (row locks, triggers, concurrency).
test-postgres: venv
	scripts/with-postgres.sh $(VENV)/bin/pytest -p no:cacheprovider -q tests/accounting tests/federation

run: venv
	scripts/run.sh

$(BENCH_VENV)/.installed: requirements.txt requirements-dev.txt requirements-bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -r requirements-bench.txt
	touch $@

bench: system-packages $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/accounting.py
	$(BENCH_VENV)/bin/python bench/quality.py
	$(BENCH_VENV)/bin/python bench/dpsgd.py
	$(BENCH_VENV)/bin/python bench/secagg.py
	$(BENCH_VENV)/bin/python bench/rounds.py
	$(BENCH_VENV)/bin/python bench/api_load.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) staticfiles
