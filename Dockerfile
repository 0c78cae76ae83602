# pgreactive as a container: `docker build -t pgreactive .`, or the whole stack with
# `docker-compose up` (docker-compose.yml beside this file).
#
# Ports (fixed here, in deploy/pgreactive.yaml and in docker-compose.yml; tests/test_packaging.py
# checks that they agree):
#   6543  the proxy: clients connect here instead of to Postgres (as in `make run`)
#   9187  /metrics, /healthz, /readyz. Note: 9187 is also postgres_exporter's default port;
#         inside the container there is no clash, on the host publish it elsewhere if needed.
# A config that moves metrics.listen off port 9187 must also override the HEALTHCHECK.
#
# The image holds the project in a venv of its own (/opt/pgreactive), since its top-level
# packages (`proxy`, `cache`, `analyzer`) share names with unrelated PyPI packages.

# --- builder: a venv with pgreactive installed ------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from (pyproject.toml names README.md as the long description).
COPY pyproject.toml README.md constraints.txt ./
COPY proxy ./proxy
COPY analyzer ./analyzer
COPY cache ./cache

# The same venv and pip commands as the Makefile's `$(VENV)/.installed` target, which is what
# `make test` (and so CI) exercises; tests/test_packaging.py fails if they drift apart.
# The one deliberate difference: no `-e` (the runtime stage copies only the venv, not /src);
# like `make run` it installs no `[test]` extra (the Makefile's `.installed-test` adds it),
# and like every Makefile install it pins the runtime versions with constraints.txt.
# pglast, hiredis and uvloop come as manylinux wheels for amd64 and arm64, so no compiler is
# needed; on another architecture add `build-essential` to this stage.
RUN python -m venv /opt/pgreactive
RUN /opt/pgreactive/bin/python -m pip install --quiet --upgrade pip
RUN /opt/pgreactive/bin/python -m pip install --quiet -c constraints.txt .

# --- runtime: the venv on a slim Python, as a non-root user ----------------------------------
# Same base image as the builder, so the venv's python symlink (/usr/local/bin/python3.11)
# resolves here too.
FROM python:3.11-slim

ENV PATH=/opt/pgreactive/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric uid/gid so orchestrators can check runAsNonRoot and volume permissions.
RUN groupadd --system --gid 10001 pgreactive \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pgreactive

COPY --from=builder /opt/pgreactive /opt/pgreactive
# A working default (the compose variant); mount your own over it, read-only.
COPY deploy/pgreactive.yaml /etc/pgreactive/config.yaml

USER 10001:10001

EXPOSE 6543 9187

# pgreactive is PID 1 (exec-form ENTRYPOINT, no shell in between) and handles SIGTERM itself:
# it stops accepting, lets running statements finish for limits.shutdown_grace_seconds (10 s by
# default), then closes every session. Give `docker stop -t` / compose's stop_grace_period more
# than that grace.
STOPSIGNAL SIGTERM

# /healthz answers 200 while the process serves; curl and wget are not in the slim image, so
# the probe is the venv's Python with urllib only: a refused connection, a timeout or an HTTP
# error status raises, and the uncaught exception exits 1 (unhealthy).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", \
         "import urllib.request as u; u.urlopen('http://127.0.0.1:9187/healthz', timeout=3)"]

ENTRYPOINT ["pgreactive"]
CMD ["--config", "/etc/pgreactive/config.yaml"]
