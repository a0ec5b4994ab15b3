# mlapi image: gunicorn serving wsgi:app as an unprivileged user.
# Build: docker build --build-arg MLAPI_BUILD_COMMIT=$(git rev-parse --short HEAD) -t mlapi:TAG .
# (the commit then shows in mlapi_build_info{commit=...}; without it: "unknown").
# Run: see docs/operations.md.
# Port 8000 is for a buffering proxy in front (compose.yaml, deploy/k8s: nginx), not for
# clients: gunicorn reads a request's head and body without a deadline.

# Stage 1: install the pinned requirements into a virtualenv (every pin has a wheel).
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

# Stage 2: the runtime, with the virtualenv and the application code only.
FROM python:3.11-slim
RUN groupadd --system --gid 10001 mlapi \
    && useradd --system --uid 10001 --gid mlapi --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin mlapi
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY config.py gunicorn.conf.py serve.py wsgi.py ./
COPY mlapi ./mlapi
# Code stays root-owned (read-only to the service); bytecode is compiled now because the
# root filesystem may be read-only at run time. Only the instance folder is the user's.
RUN python -m compileall -q /app \
    && mkdir /app/instance \
    && chown mlapi:mlapi /app/instance
# The commit the image is built from (no .git in the image): mlapi_build_info{commit=...}.
# Declared last, so a new commit does not rebuild the layers above.
ARG MLAPI_BUILD_COMMIT=unknown
ENV MLAPI_BUILD_COMMIT=$MLAPI_BUILD_COMMIT \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    PORT=8000
USER 10001:10001
EXPOSE 8000
# No curl in the slim image: python's urllib does the probe (a non-2xx status raises).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('PORT', '8000'), timeout=4)"]
# gunicorn -c gunicorn.conf.py wsgi:app, with WEB_CONCURRENCY checked like every setting.
CMD ["python", "serve.py"]
