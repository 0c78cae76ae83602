# The two set-up commands of the README: `make run` and `make test`.
# Both create .venv and install the project into it (once, and again when pyproject.toml or
# constraints.txt changes), with the pinned runtime versions of constraints.txt; `make run`
# installs the runtime dependencies only, `make test` (and `make lint`) adds the test tools.
PYTHON ?= python3
VENV ?= .venv
LISTEN ?= 127.0.0.1:6543
UPSTREAM ?= postgresql://127.0.0.1:5432
METRICS ?= 127.0.0.1:9187

.PHONY: run test lint install install-test

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	PGREACTIVE_CATALOG_USER=$${PGREACTIVE_CATALOG_USER-postgres} \
	  $(VENV)/bin/pgreactive --listen $(LISTEN) --upstream $(UPSTREAM) --metrics $(METRICS) $(ARGS)

test: install-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check proxy analyzer cache tests bench
	$(VENV)/bin/mypy
