# One command to serve, one to test; both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: run test lint typecheck check-imports pytest browser clean messages

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "prefcenter needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[dev]'
	touch $(STAMP)

## run: serve on SQLite at http://127.0.0.1:8000 (set PREFCENTER_* to change)
run: $(STAMP)
	$(BIN)/prefcenter serve

## test: lint, format check, mypy --strict, import layers, then pytest on SQLite and PostgreSQL
test: lint typecheck check-imports pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests alembic bench
	$(BIN)/ruff format --check src tests alembic bench

typecheck: $(STAMP)
	$(BIN)/mypy

check-imports: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP) browser
	$(BIN)/pytest $(PYTEST_ARGS)

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
	$(BIN)/pybabel update -i src/prefcenter/locales/messages.pot -d src/prefcenter/locales --no-location --omit-header
