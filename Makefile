# Two commands set everything up from a fresh clone:
#   make demo   runs the sample app's scripted demo on the embedded emulator
#   make test   runs ruff, mypy and the whole test suite
# Both build their own virtual environment first; nothing else is needed but Python >= 3.11.

PYTHON ?= python3
VENV ?= .venv
# Extra pip requirement pinning Django, for the CI leg on another Django release.
DJANGO ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-postgres pytest lint demo demo-serve bench browser-deps clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' $(if $(DJANGO),'$(DJANGO)')
	@touch $@

# Debian's Chromium and its driver for the browser test (root installs them; others get sudo).
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(PY) -m mkdocs build --strict --quiet -d .mkdocs-site

# Four workers (pytest-xdist): the suite mostly waits on sockets, so it overlaps well even on
# two cores. PYTEST_ARGS="-n 0 ..." runs it in one process.
PYTEST_WORKERS ?= -n 4

pytest: $(STAMP) browser-deps
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: lint pytest

# The same suite on PostgreSQL (127.0.0.1:5432, trust auth, database "test" unless PG* says otherwise).
test-postgres: $(STAMP) browser-deps
	CLOUDTASK_TEST_DATABASE=postgres $(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) sample_app/manage.py demo

# Keeps the sample shop running for clicking around (PORT=8001 to move it off 8000). Each start
# empties the shop's orders and task rows of earlier runs; KEEP_DATA=1 keeps them.
demo-serve: $(STAMP)
	$(PY) sample_app/manage.py demo --serve $(if $(PORT),--port $(PORT)) $(if $(KEEP_DATA),--keep-data)

# Every benchmark (bench/run.py); BENCH="api.py async_send.py" runs only those scripts.
bench: $(STAMP)
	$(PY) bench/run.py $(BENCH)

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache .pytest_cache *.egg-info
