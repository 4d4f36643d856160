# prefcenter as a container: the installed package (migrations ship inside the wheel as
# prefcenter/_migrations), run by an unprivileged user. Production runs it on PostgreSQL; see
# docker-compose.yml and docs/operations.md.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv holding prefcenter and its dependencies, nothing else -----------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Every package is the version requirements/*.lock pins, checked against its hashes (see
# "Dependencies" in README.md). The locks come in before the source so that this layer is
# rebuilt only when they change.
COPY requirements/runtime.lock requirements/build.lock ./requirements/
RUN python -m venv /opt/prefcenter \
    && /opt/prefcenter/bin/pip install --require-hashes -r requirements/runtime.lock
# The build backend (hatchling) from its lock, in a venv of its own that stays in this stage:
# pip's default build isolation would fetch whichever hatchling is newest, unchecked.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r requirements/build.lock

# pyproject.toml and README.md are the package metadata; alembic/ is force-included into the
# wheel, so the image needs no source checkout at run time.
COPY pyproject.toml README.md ./
COPY alembic ./alembic
COPY src ./src
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/prefcenter/bin/pip install --no-deps /tmp/dist/prefcenter-*.whl \
    && /opt/prefcenter/bin/pip check \
    && /opt/prefcenter/bin/python -c "import importlib.resources as r; \
        assert (r.files('prefcenter') / '_migrations' / 'env.py').is_file(), 'no migrations'"

# --- run -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ENV PATH=/opt/prefcenter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8000 \
    WORKERS=2

# A fixed, non-zero uid/gid so volumes can be prepared for it on the host.
RUN groupadd --system --gid 10001 prefcenter \
    && useradd --system --uid 10001 --gid prefcenter --home-dir /var/lib/prefcenter \
        --shell /usr/sbin/nologin prefcenter \
    && install -d -o prefcenter -g prefcenter -m 0750 /var/lib/prefcenter

COPY --from=build /opt/prefcenter /opt/prefcenter

# The working directory is where a SQLite default (sqlite:///./prefcenter.db) and its
# generated .signing-keys and .audit-key files would land: mount a volume here if you run
# without PostgreSQL.
WORKDIR /var/lib/prefcenter
USER prefcenter:prefcenter

EXPOSE 8000

# /healthz says the process answers; the compose file checks /readyz (database and schema).
# No curl in the slim image: urlopen raises (exit 1) on a refused connection or a non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]

# The shell only expands the variables; `exec` then replaces it, so the SIGTERM of `docker stop`
# reaches uvicorn itself, which finishes in-flight requests before exiting.
# `prefcenter serve` applies pending migrations first (see docs/operations.md for many hosts).
CMD ["sh", "-c", "exec prefcenter serve --host 0.0.0.0 --port \"${PORT}\" --workers \"${WORKERS}\""]
