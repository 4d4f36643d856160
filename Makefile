# One command to serve, one to test; both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP_FLAGS ?= --quiet --disable-pip-version-check
# `make lock` runs pip-compile from a venv of its own, so the project's .venv holds exactly the lock.
LOCK_TOOLS := $(VENV)/lock-tools
PIP_TOOLS_VERSION := 7.6.2
PIP_COMPILE := CUSTOM_COMPILE_COMMAND='make lock' $(LOCK_TOOLS)/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
# What moves pins in lock $(1): UPGRADE=all moves all; UPGRADE='NAME ...' (as the locks spell
# them) moves those, and only in the locks that already pin them: pip-compile's
# --upgrade-package would add a package to a lock that does not need it.
lock_upgrade = $(if $(filter all,$(UPGRADE)),--upgrade,$(foreach p,$(UPGRADE),\
	$$(grep -qiE '^$(p)==' $(1) && echo --upgrade-package=$(p))))

.PHONY: run test test-faults lint typecheck check-imports pytest browser clean messages lock

# Every package comes from the dev lock, pinned and checked against its hashes (pip refuses
# anything unpinned or unhashed); the project goes in last, without dependencies. The build
# backend (hatchling) is in the dev lock too, hence --no-build-isolation: otherwise pip would
# fetch whichever hatchling is newest into a throwaway environment and run it unchecked. No pip
# upgrade either, for the same reason: the venv keeps the pip that ships with $(PYTHON).
$(STAMP): pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "prefcenter needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	touch $(STAMP)

## lock: re-pin requirements/*.lock from pyproject.toml, with hashes. A pin already in a lock is
## kept while pyproject.toml allows it; UPGRADE=all or UPGRADE='NAME ...' moves pins.
## runtime.lock (the image) comes first; dev.lock (make, CI) is constrained by it and build.lock
## (the image's build backend) by dev.lock, so a package has one version in all three.
lock: $(LOCK_TOOLS)/.pip-tools-$(PIP_TOOLS_VERSION)
	$(PIP_COMPILE) $(call lock_upgrade,requirements/runtime.lock) \
		-o requirements/runtime.lock pyproject.toml
	$(PIP_COMPILE) $(call lock_upgrade,requirements/dev.lock) \
		--extra dev --build-deps-for editable -c requirements/runtime.lock \
		-o requirements/dev.lock pyproject.toml
	$(PIP_COMPILE) $(call lock_upgrade,requirements/build.lock) \
		--only-build-deps --build-deps-for wheel -c requirements/dev.lock \
		-o requirements/build.lock pyproject.toml

$(LOCK_TOOLS)/.pip-tools-$(PIP_TOOLS_VERSION):
	test -x $(LOCK_TOOLS)/bin/python || $(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install $(PIP_FLAGS) 'pip-tools==$(PIP_TOOLS_VERSION)'
	touch $@

## run: serve on SQLite at http://127.0.0.1:8000 (set PREFCENTER_* to change)
run: $(STAMP)
	$(BIN)/prefcenter serve

## test: lint, format check, mypy --strict, import layers, then pytest on SQLite and PostgreSQL
test: lint typecheck check-imports pytest test-faults

lint: $(STAMP)
	$(BIN)/ruff check src tests alembic bench
	$(BIN)/ruff format --check src tests alembic bench

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy bench  # the benchmarks are scripts, not a package: checked on their own

check-imports: $(STAMP)
	$(BIN)/lint-imports

## pytest: the default suite on every core (pytest-xdist; PYTEST_WORKERS=0 runs it in one process)
PYTEST_WORKERS ?= auto
pytest: $(STAMP) browser
	$(BIN)/pytest -m 'not faults' -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

## test-faults: the fault tests (tests/faults, 1½–3 min on 2 cores): PostgreSQL restarted, absent, locked;
## SIGTERM and kill -9 under load; the clock stepped back; a full disk (docs/operations.md)
test-faults: $(STAMP)
	$(BIN)/pytest -m faults tests/faults $(PYTEST_ARGS)

## browser: Debian's chromium for the real-browser tests, installed with apt when missing
## (PREFCENTER_SKIP_BROWSER=1 skips those tests instead; without it a missing browser fails)
browser:
	@if [ "$$PREFCENTER_SKIP_BROWSER" = 1 ]; then \
		echo "PREFCENTER_SKIP_BROWSER=1: the real-browser tests will be skipped"; \
	elif [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
		echo "installing Debian's chromium for the real-browser tests"; \
		$$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends chromium; \
	fi

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

## messages: extract page texts and merge them into every language's catalog
messages: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -o src/prefcenter/locales/messages.pot --no-location --omit-header --sort-output .
	$(BIN)/pybabel update -i src/prefcenter/locales/messages.pot -d src/prefcenter/locales --ignore-obsolete
