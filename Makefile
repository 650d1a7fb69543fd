# pg-realtime: the `realtime` extension (PGXS) and the `pg-realtime` sidecar.
#
#   make            build sql/realtime--<version>.sql from sql/src/*.sql
#   make install    install the extension into $(pg_config --sharedir)/extension
#   make run        virtualenv + extension + `pg-realtime serve` on an embedded PostgreSQL
#   make test       the whole suite against a PostgreSQL the run starts for itself
#   make lint       sqlfluff (SQL), ruff and mypy (Python)
#   make bench      the benchmarks in bench/, results under docs/bench/

EXTENSION    = realtime
# The version lives in one place: realtime.control.
EXTVERSION   = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)
SQL_SOURCES  = $(sort $(wildcard sql/src/*.sql))
DATA_built   = sql/$(EXTENSION)--$(EXTVERSION).sql
DATA         = $(filter-out $(DATA_built),$(wildcard sql/$(EXTENSION)--*--*.sql))

PG_CONFIG   ?= pg_config
PGXS        := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The install script is the sources concatenated in file-name order, one transaction-free
# script as CREATE EXTENSION expects.
sql/$(EXTENSION)--$(EXTVERSION).sql: $(SQL_SOURCES) $(EXTENSION).control
	@echo "-- Generated from sql/src/*.sql by make; edit those files, not this one." > $@
	@printf '%s\n' '\echo Use "CREATE EXTENSION $(EXTENSION)" to load this file. \quit' >> $@
	@for f in $(SQL_SOURCES); do printf '\n-- %s\n' "$$f" >> $@; cat "$$f" >> $@; done

# ---- Python side ------------------------------------------------------------------------
PYTHON      ?= python3
VENV        ?= .venv
VENV_BIN     = $(VENV)/bin
VENV_STAMP   = $(VENV)/.installed

$(VENV_STAMP): pyproject.toml requirements.lock
	test -x $(VENV_BIN)/python || $(PYTHON) -m venv $(VENV)
	$(VENV_BIN)/pip install --quiet --upgrade pip
	$(VENV_BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

.PHONY: venv node-clients ext-install system-packages test lint run bench fmt
venv: $(VENV_STAMP)

node-clients: tests/clients/js/node_modules/.package-lock.json
tests/clients/js/node_modules/.package-lock.json: tests/clients/js/package-lock.json
	cd tests/clients/js && npm ci --no-audit --no-fund
	touch $@

# Install the extension when we may write the share directory; otherwise the suite checks
# that what is installed matches the sources and says `sudo make install` if it does not.
ext-install: all
	@if [ -w "$(DESTDIR)$(datadir)/extension" ]; then $(MAKE) --no-print-directory install >/dev/null; \
	else echo "note: $(datadir)/extension is not writable; run 'sudo make install' after changing sql/"; fi

# Debian packages the suite needs (installed as root, else the exact command is printed).
system-packages:
	@scripts/system-packages.sh

test: system-packages venv node-clients ext-install
	$(VENV_BIN)/pytest $(PYTEST_ARGS)

lint: venv all
	$(VENV_BIN)/sqlfluff lint sql/src
	$(VENV_BIN)/ruff check python tests bench
	$(VENV_BIN)/ruff format --check python tests bench
	$(VENV_BIN)/mypy

fmt: venv
	$(VENV_BIN)/ruff format python tests bench
	$(VENV_BIN)/ruff check --fix python tests bench

run: venv ext-install
	$(VENV_BIN)/pg-realtime serve $(RUN_ARGS)

bench: venv node-clients ext-install
	$(VENV_BIN)/python -m bench $(BENCH_ARGS)
