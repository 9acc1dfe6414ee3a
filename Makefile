# fedgov: one command for everything.
#   make run    the whole system on this machine (web, Celery worker and beat, Redis, agents)
#   make test   the whole suite (SQLite, then the database tests again on PostgreSQL)
#   make bench  every benchmark, printed as tables next to the peers
#   make bench-rounds  a governed round at 10^5 and 10^6 parameters beside Flower's SecAgg+

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BENCH_VENV := .venv-bench
# Flower for bench/rounds.py, in its own environment (never in requirements*.txt of the project).
FLOWER_VENV := bench/.venv-flower
SYSTEM_TEST_PACKAGES := redis-server postgresql chromium fonts-dejavu-core
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test test-sqlite test-postgres bench bench-rounds lint venv system-packages clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The partner's wheels (requirements-agent.txt), for tests/agent/test_agent_install.py, which
# installs them offline into a virtualenv of their own and runs the agent from it.
AGENT_WHEELHOUSE := $(VENV)/wheelhouse-agent

$(AGENT_WHEELHOUSE)/.built: requirements-agent.txt $(VENV)/.installed
	rm -rf $(AGENT_WHEELHOUSE)
	$(PY) -m pip wheel --quiet -r requirements-agent.txt -w $(AGENT_WHEELHOUSE)
	touch $@

venv: $(VENV)/.installed $(AGENT_WHEELHOUSE)/.built

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

$(FLOWER_VENV)/.installed: bench/requirements-flower.txt
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install --quiet --upgrade pip
	$(FLOWER_VENV)/bin/pip install --quiet -r bench/requirements-flower.txt
	touch $@

bench: system-packages $(BENCH_VENV)/.installed $(FLOWER_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/accounting.py
	$(BENCH_VENV)/bin/python bench/quality.py
	$(BENCH_VENV)/bin/python bench/dpsgd.py
	$(BENCH_VENV)/bin/python bench/secagg.py
	$(BENCH_VENV)/bin/python bench/rounds.py
	$(BENCH_VENV)/bin/python bench/api_load.py

# fedgov and Flower (deployment engine, SecAgg+) in the same run, round by round; the last
# line compares them at n=10, d=1e6. Quick form: make bench-rounds ROUNDS_ARGS=--quick
bench-rounds: system-packages venv $(FLOWER_VENV)/.installed
	$(PY) bench/rounds.py $(ROUNDS_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(FLOWER_VENV) staticfiles
