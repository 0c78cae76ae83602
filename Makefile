# The two set-up commands of the README: `make run` and `make test`.
# Both create .venv and install the project into it (once, and again when pyproject.toml or
# constraints.txt changes), with the pinned runtime versions of constraints.txt; `make run`
# installs the runtime dependencies only, `make test` (and `make lint`) adds the test tools.
PYTHON ?= python3
VENV ?= .venv
LISTEN ?= 127.0.0.1:6543
UPSTREAM ?= postgresql://127.0.0.1:5432
METRICS ?= 127.0.0.1:9187

CERT_DIR ?= .dev-certs
CERT_CN ?= localhost

.PHONY: run test lint install install-test dev-certs

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

# A self-signed certificate for trying TLS (docs/tls.md), valid for localhost and 127.0.0.1:
#   make dev-certs && make run ARGS="--config tls.yaml"   (tls.yaml: see docs/tls.md)
# Clients verify it with sslmode=verify-full sslrootcert=$(CERT_DIR)/server.crt.
dev-certs:
	mkdir -p $(CERT_DIR)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
	  -subj "/CN=$(CERT_CN)" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout $(CERT_DIR)/server.key -out $(CERT_DIR)/server.crt 2>/dev/null
	chmod 600 $(CERT_DIR)/server.key
	@echo "$(CERT_DIR)/server.crt and $(CERT_DIR)/server.key (CN=$(CERT_CN))"
