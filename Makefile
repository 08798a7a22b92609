# Sluice — developer entry points.
#
#   make run     create the virtualenv, install, migrate, seed the demo users and start
#                web + worker + beat on the embedded default (SQLite + filesystem broker)
#   make test    install everything and run the whole suite (PostgreSQL + Redis when they
#                answer), then the engine's core suite once more on SQLite and the
#                integration tests once more through PgBouncer
#   make test-long  the fuzzers (HTML forms, schemathesis) and the engine's state machine,
#                300 examples per test
#   make chaos   a load of runs through worker SIGKILLs, a broker flush, a PostgreSQL restart
#                and a killed beat: lost / duplicated / stuck counts (docs/reliability.md)
#   make bench   install the peers (the `bench` extra) and run bench/run.py
#   make prod-local  the production topology of the Procfile (gunicorn, a worker per pool,
#                beat) on this machine's PostgreSQL and Redis, DEBUG off (docs/deploy.md)
#   make lint    ruff, ruff format --check, mypy and the core's import contract (lint-imports)
#
# Each recipe runs as one bash script (.ONESHELL) with -euo pipefail.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
VAR := var
PORT ?= 8000
PYTEST_ARGS ?=
CHAOS_ARGS ?=
SLUICE_TEST_REDIS_DB ?= 3
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_BROKER_URL ?= redis://127.0.0.1:6379/$(SLUICE_TEST_REDIS_DB)

# Python's playwright package never fetches a browser by itself, but make sure nothing it runs
# tries: browser tests drive Debian's /usr/bin/chromium.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv install install-test install-bench run prod-local migrate seed test test-long \
        test-chromium test-pgbouncer bench chaos lint lock clean

help:
	@sed -n '2,16p' Makefile | sed 's/^# \{0,1\}//'

# --- virtualenv -------------------------------------------------------------------------------
# Reuses .venv when its interpreter is 3.12+; otherwise finds one (python3.13, python3.12 on
# PATH, pyenv's 3.12+, then python3 if it is new enough) and creates it anew.
venv:
	@ok() { "$$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }
	if [ -x "$(PY)" ] && ok "$(PY)"; then exit 0; fi
	found=""
	for cand in python3.13 python3.12 $$(ls -d $$HOME/.pyenv/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -V) python3; do
	    if command -v "$$cand" >/dev/null 2>&1 && ok "$$cand"; then found="$$(command -v "$$cand")"; break; fi
	done
	if [ -z "$$found" ]; then
	    echo "error: Sluice needs Python >= 3.12 and none was found (tried python3.13, python3.12," >&2
	    echo "       ~/.pyenv/versions/3.1[2-9]*/bin/python and python3). Install one and retry." >&2
	    exit 1
	fi
	echo "==> creating $(VENV) with $$found ($$("$$found" -V 2>&1))"
	rm -rf "$(VENV)"
	"$$found" -m venv "$(VENV)"

# --- dependencies -----------------------------------------------------------------------------
# One stamp per set of extras, holding a hash of that set's requirements and of the lock: a set is
# reinstalled only when its requirements in pyproject.toml or requirements.lock changed (editing
# the pytest or ruff sections does not reinstall anything). The project itself is not installed:
# it runs from the checkout, so the requirements are read from pyproject.toml and installed
# under the lock's constraints.
define pip_install
	stamp="$(VENV)/.sluice-$(1).stamp"
	reqs="$(VAR)/requirements-$(1).txt"
	mkdir -p $(VAR)
	$(PY) -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(*p["dependencies"], *[r for e in sys.argv[1:] for r in p["optional-dependencies"][e]], sep="\n")' $(2) > "$$reqs"
	want="$$(cat "$$reqs" requirements.lock | sha256sum | cut -d' ' -f1)"
	if [ -f "$$stamp" ] && [ "$$(cat "$$stamp")" = "$$want" ]; then exit 0; fi
	echo "==> installing [$(1)] into $(VENV)"
	$(PY) -m pip install -q --progress-bar off -c requirements.lock -r "$$reqs"
	echo "$$want" > "$$stamp"
endef

install: venv
	@$(call pip_install,runtime,)

install-test: venv
	@$(call pip_install,test,test)

install-bench: venv
	@$(call pip_install,bench,bench)

# Re-resolve every pin from pyproject.toml in a scratch virtualenv and write requirements.lock.
lock: venv
	@rm -rf $(VAR)/lockvenv
	$(PY) -m venv $(VAR)/lockvenv
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(*p["dependencies"], *[r for e in p["optional-dependencies"].values() for r in e], sep="\n")' > $(VAR)/requirements-all.txt
	$(VAR)/lockvenv/bin/pip install -q --progress-bar off -r $(VAR)/requirements-all.txt
	{ echo "# Fully pinned constraints for Sluice: runtime + [test] + [bench], resolved together on CPython $$($(VAR)/lockvenv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')."
	  echo "# Used as \`pip install -c requirements.lock ...\` by the Makefile. Regenerate with \`make lock\`."
	  $(VAR)/lockvenv/bin/pip freeze; } > requirements.lock
	rm -rf $(VAR)/lockvenv
	echo "==> wrote requirements.lock"

# --- run --------------------------------------------------------------------------------------
# Two first `make run`s at once on a fresh var directory raced in migrate ("table already
# exists"): one at a time, where flock(1) exists.
LOCKED = $(shell command -v flock >/dev/null 2>&1 && echo "flock var/.setup.lock")

migrate: install
	@mkdir -p var && $(LOCKED) $(PY) manage.py migrate --no-input

seed: migrate
	@$(LOCKED) $(PY) manage.py seed_demo

# DEBUG stays off (the product's own error pages, static files served by whitenoise from
# STATIC_ROOT); plain http on 127.0.0.1, so SLUICE_HTTPS=0. `DEBUG=1 make run` for Django's
# debug pages.
run: seed
	@$(PY) manage.py collectstatic --no-input -v 0
	echo "==> starting web + worker + beat on http://127.0.0.1:$(PORT)/ (Ctrl-C stops all three)"
	DEBUG=$${DEBUG:-0} SLUICE_HTTPS=$${SLUICE_HTTPS:-0} exec $(PY) manage.py sluice_dev --port $(PORT)

# The production recipe on this machine: the Procfile's processes (release = migrate +
# collectstatic, then gunicorn, one Celery worker per pool queue and beat), supervised by
# manage.py sluice_procfile, which reads the Procfile and adds nothing to its commands.
# PostgreSQL and Redis from DATABASE_URL / CELERY_BROKER_URL, by default this machine's, with a
# database of its own (created when missing). DEBUG off; plain http on 127.0.0.1 (SLUICE_HTTPS=0).
PROD_LOCAL_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/sluice_prod_local
PROD_LOCAL_BROKER_URL ?= redis://127.0.0.1:6379/5
prod-local: install
	@export DATABASE_URL="$${DATABASE_URL:-$(PROD_LOCAL_DATABASE_URL)}"
	export CELERY_BROKER_URL="$${CELERY_BROKER_URL:-$(PROD_LOCAL_BROKER_URL)}"
	export SLUICE_VAR_DIR="$${SLUICE_VAR_DIR:-$(CURDIR)/$(VAR)/prod-local}"
	export STATIC_ROOT="$${STATIC_ROOT:-$$SLUICE_VAR_DIR/staticfiles}"
	export DEBUG=0 SLUICE_HTTPS="$${SLUICE_HTTPS:-0}" PORT=$(PORT)
	mkdir -p "$$SLUICE_VAR_DIR"
	# A secret key of its own, made once (sessions survive restarts).
	if [ -z "$${SECRET_KEY:-}" ]; then
	    [ -s "$$SLUICE_VAR_DIR/secret_key" ] || $(PY) -c 'import secrets; print(secrets.token_urlsafe(50))' > "$$SLUICE_VAR_DIR/secret_key"
	    export SECRET_KEY="$$(cat "$$SLUICE_VAR_DIR/secret_key")"
	fi
	echo "==> Procfile topology on http://127.0.0.1:$(PORT)/ (Ctrl-C stops it)"
	exec $(PY) manage.py sluice_procfile --create-database

# --- test -------------------------------------------------------------------------------------
# Browser tests drive Debian's chromium. As root it is installed with apt-get when missing; a
# non-root developer gets a warning (and the browser tests are deselected), CI gets an error.
test-chromium:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	    echo "==> installing Debian's chromium (apt-get)"
	    export DEBIAN_FRONTEND=noninteractive
	    pkgs="chromium fonts-liberation"
	    apt-get install -y -q --no-install-recommends $$pkgs \
	        || { apt-get update -q && apt-get install -y -q --no-install-recommends $$pkgs; }
	elif [ -n "$${CI:-}" ]; then
	    echo "error: /usr/bin/chromium is missing and this CI run cannot install it (not root)." >&2
	    exit 1
	else
	    echo "warning: /usr/bin/chromium is missing and this is not root: browser tests are" >&2
	    echo "         deselected. Install it with 'sudo apt-get install chromium'." >&2
	fi

# Step [c] runs the integration tests through Debian's pgbouncer, installed the same way.
test-pgbouncer:
	@if command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ]; then exit 0; fi
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	    echo "==> installing Debian's pgbouncer (apt-get)"
	    export DEBIAN_FRONTEND=noninteractive
	    apt-get install -y -q --no-install-recommends pgbouncer \
	        || { apt-get update -q && apt-get install -y -q --no-install-recommends pgbouncer; }
	elif [ -n "$${CI:-}" ]; then
	    echo "error: pgbouncer is missing and this CI run cannot install it (not root)." >&2
	    exit 1
	else
	    echo "warning: pgbouncer is missing and this is not root: step [c] is skipped." >&2
	    echo "         Install it with 'sudo apt-get install pgbouncer'." >&2
	fi

# (a) the whole suite against PostgreSQL + Redis when they answer (SQLite, integration tests
#     deselected, when they don't — or a failure when SLUICE_REQUIRE_SERVICES=1);
# (b) the engine's core suite once more on SQLite, the embedded default;
# (c) with the services, the integration tests of tests/workflows and tests/reviews once more
#     through a throwaway PgBouncer in transaction pooling mode (tests/pgbouncer.py,
#     SLUICE_PGBOUNCER=1), on a test database of their own.
# All always run; the target fails if any did. pytest's exit 5 ("no tests collected") is a
# failure in (a) and fine in (b). Extra pytest arguments: make test PYTEST_ARGS="-k foo".
test: install-test test-chromium test-pgbouncer
	@mkdir -p $(VAR)
	services=1
	$(PY) -c 'import psycopg; psycopg.connect("$(TEST_DATABASE_URL)", connect_timeout=3).close()' 2>/dev/null \
	    || { echo "note: PostgreSQL does not answer at $(TEST_DATABASE_URL)" >&2; services=0; }
	$(PY) -c 'import redis; redis.Redis.from_url("$(TEST_BROKER_URL)", socket_connect_timeout=3, socket_timeout=3).ping()' 2>/dev/null \
	    || { echo "note: Redis does not answer at $(TEST_BROKER_URL)" >&2; services=0; }
	marks=()
	if [ ! -x /usr/bin/chromium ]; then marks+=("not browser"); fi
	if [ $$services = 1 ]; then
	    label="full suite on PostgreSQL + Redis"
	    envs=(DATABASE_URL=$(TEST_DATABASE_URL) SLUICE_TEST_DB_NAME=test_sluice
	          CELERY_BROKER_URL=$(TEST_BROKER_URL) SLUICE_TEST_SERVICES=1
	          SLUICE_VAR_DIR=$(CURDIR)/$(VAR)/test-services)
	elif [ "$${SLUICE_REQUIRE_SERVICES:-}" = 1 ]; then
	    echo "error: SLUICE_REQUIRE_SERVICES=1 but PostgreSQL (127.0.0.1:5432) and/or Redis" >&2
	    echo "       (127.0.0.1:6379) do not answer; start them (see .ci/run) and retry." >&2
	    exit 1
	else
	    echo "warning: PostgreSQL/Redis not available: running the suite on SQLite without the" >&2
	    echo "         integration tests. Start both services for the whole suite." >&2
	    label="suite on SQLite, integration tests deselected"
	    marks+=("not integration")
	    rm -rf $(VAR)/test-sqlite && mkdir -p $(VAR)/test-sqlite
	    envs=(DATABASE_URL=sqlite:///$(CURDIR)/$(VAR)/test-sqlite/sluice.sqlite3
	          SLUICE_VAR_DIR=$(CURDIR)/$(VAR)/test-sqlite)
	fi
	markexpr=()
	if [ $${#marks[@]} -gt 0 ]; then m="$${marks[0]}"; for x in "$${marks[@]:1}"; do m="$$m and $$x"; done; markexpr=(-m "$$m"); fi
	echo "==> [a] $$label"
	echo "+ env -u DATABASE_URL -u CELERY_BROKER_URL $${envs[*]} $(PY) -m pytest $${markexpr[*]@Q} $(PYTEST_ARGS)"
	rc_a=0
	env -u DATABASE_URL -u CELERY_BROKER_URL -u SLUICE_TEST_DB_NAME -u SLUICE_TEST_SERVICES \
	    "$${envs[@]}" $(PY) -m pytest "$${markexpr[@]}" $(PYTEST_ARGS) || rc_a=$$?
	[ $$rc_a = 5 ] && echo "error: [a] collected no tests" >&2
	# (b) The core suite on SQLite, in a fresh var dir so its broker files stay apart from make run's.
	core_mark="core"
	if [ ! -x /usr/bin/chromium ]; then core_mark="core and not browser"; fi
	rm -rf $(VAR)/test-core && mkdir -p $(VAR)/test-core
	envs=(DATABASE_URL=sqlite:///$(CURDIR)/$(VAR)/test-core/sluice.sqlite3
	      SLUICE_VAR_DIR=$(CURDIR)/$(VAR)/test-core)
	echo "==> [b] core suite on SQLite (the embedded default)"
	echo "+ env -u DATABASE_URL -u CELERY_BROKER_URL $${envs[*]} $(PY) -m pytest -m '$$core_mark' $(PYTEST_ARGS)"
	rc_b=0
	env -u DATABASE_URL -u CELERY_BROKER_URL -u SLUICE_TEST_DB_NAME -u SLUICE_TEST_SERVICES \
	    "$${envs[@]}" $(PY) -m pytest -m "$$core_mark" $(PYTEST_ARGS) || rc_b=$$?
	if [ $$rc_b = 5 ]; then echo "note: [b] collected no core tests"; rc_b=0; fi
	# (c) Through PgBouncer: the test database is made and dropped directly on PostgreSQL, so
	#     pytest runs with --reuse-db (it never drops it through the pooler). The multi-host
	#     failover test is not about the pooler and, like the browser tests, runs in [a] only.
	rc_c=0
	if [ $$services = 1 ] && { command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ]; }; then
	    echo "==> [c] integration tests of the engine and the reviews through PgBouncer (transaction mode)"
	    rm -rf $(VAR)/test-pgbouncer && mkdir -p $(VAR)/test-pgbouncer
	    env -u DATABASE_URL -u CELERY_BROKER_URL -u SLUICE_TEST_DB_NAME -u SLUICE_TEST_SERVICES \
	        $(PY) tests/pgbouncer.py --dir $(CURDIR)/$(VAR)/test-pgbouncer/bouncer \
	            --upstream $(TEST_DATABASE_URL) --db test_sluice_pgbouncer -- \
	        env CELERY_BROKER_URL=$(TEST_BROKER_URL) SLUICE_TEST_SERVICES=1 \
	            SLUICE_VAR_DIR=$(CURDIR)/$(VAR)/test-pgbouncer \
	        $(PY) -m pytest --reuse-db -m "integration and not browser" --ignore=tests/workflows/test_multihost.py \
	            tests/workflows tests/reviews $(PYTEST_ARGS) || rc_c=$$?
	elif [ $$services = 1 ]; then
	    echo "note: [c] skipped: pgbouncer is not installed"
	fi
	# On success pytest's own summary stays the last line printed.
	if [ $$rc_a != 0 ] || [ $$rc_b != 0 ] || [ $$rc_c != 0 ]; then
	    echo "==> make test failed: [a] exit $$rc_a, [b] exit $$rc_b, [c] exit $$rc_c" >&2
	    exit 1
	fi

# The long profile (not part of `make test`): every HTML form and the API's schemathesis run
# with SLUICE_FUZZ_EXAMPLES examples per test (300 unless set), on PostgreSQL; the engine's
# state machine (tests/workflows/test_stateful.py) runs SLUICE_STATEFUL_EXAMPLES examples (300
# unless set) on PostgreSQL and again on SQLite, with a fresh random seed each time (make test
# runs 20 fixed ones).
test-long: install-test
	@env -u DATABASE_URL -u CELERY_BROKER_URL DATABASE_URL=$(TEST_DATABASE_URL) \
	    SLUICE_TEST_DB_NAME=test_sluice_long CELERY_BROKER_URL=$(TEST_BROKER_URL) SLUICE_TEST_SERVICES=1 \
	    SLUICE_VAR_DIR=$(CURDIR)/$(VAR)/test-long SLUICE_FUZZ_EXAMPLES=$${SLUICE_FUZZ_EXAMPLES:-300} \
	    SLUICE_STATEFUL_EXAMPLES=$${SLUICE_STATEFUL_EXAMPLES:-300} SLUICE_STATEFUL_RANDOM=1 \
	    $(PY) -m pytest tests/test_form_fuzz.py tests/api/test_schemathesis.py \
	    tests/workflows/test_stateful.py $(PYTEST_ARGS)
	rm -rf $(VAR)/test-long-sqlite && mkdir -p $(VAR)/test-long-sqlite
	env -u DATABASE_URL -u CELERY_BROKER_URL -u SLUICE_TEST_DB_NAME -u SLUICE_TEST_SERVICES \
	    DATABASE_URL=sqlite:///$(CURDIR)/$(VAR)/test-long-sqlite/sluice.sqlite3 \
	    SLUICE_VAR_DIR=$(CURDIR)/$(VAR)/test-long-sqlite \
	    SLUICE_STATEFUL_EXAMPLES=$${SLUICE_STATEFUL_EXAMPLES:-300} SLUICE_STATEFUL_RANDOM=1 \
	    $(PY) -m pytest tests/workflows/test_stateful.py $(PYTEST_ARGS)

# --- bench, lint ------------------------------------------------------------------------------
bench: install-bench
	@$(PY) bench/run.py

# Sluice under faults (not part of `make test`; about 4 minutes): bench/chaos.py runs one load
# without and then with faults, in a database of its own (chaos_sluice, dropped afterwards)
# and a Redis db of its own. It RESTARTS THE LOCAL POSTGRESQL CLUSTER (pg_ctlcluster, needs
# root or the postgres user): every other client of that server loses its connections.
# CHAOS_ARGS=--no-pg-restart skips that; see `bench/chaos.py --help`.
CHAOS_BROKER_URL ?= redis://127.0.0.1:6379/11
chaos: install-test
	@env -u DATABASE_URL -u CELERY_BROKER_URL CHAOS_DATABASE_URL=$(TEST_DATABASE_URL) \
	    CHAOS_BROKER_URL=$(CHAOS_BROKER_URL) $(PY) bench/chaos.py $(CHAOS_ARGS)

lint: install-test
	@echo "+ ruff check ."
	$(PY) -m ruff check .
	echo "+ ruff format --check ."
	$(PY) -m ruff format --check .
	echo "+ mypy config workflows pipelines reviews tests/typing"
	$(PY) -m mypy config workflows pipelines reviews tests/typing
	echo "+ lint-imports (the engine core imports no product module; see pyproject.toml)"
	$(VENV)/bin/lint-imports --no-cache

clean:
	@rm -rf $(VAR)/test-services $(VAR)/test-sqlite $(VAR)/test-core $(VAR)/test-pgbouncer \
	    $(VAR)/requirements-*.txt
