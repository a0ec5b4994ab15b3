"""gunicorn settings for mlapi, read from the environment.

Run: gunicorn -c gunicorn.conf.py wsgi:app  (scripts/run does this).

mlapi's own settings are read and checked here, in the master, by config.py: a bad
one stops gunicorn before any worker starts, with one JSON log line naming it and a
non-zero exit. The master then waits (MLAPI_DB_WAIT_SECONDS) for the database.

Without MLAPI_REDIS_URL, rate limits, cache, revocation and active users live
in process memory, so one worker process is the only correct shape: more
workers would each count separately and multiply every limit. In that mode
this file runs a single worker (with threads) and says so in the log.
"""

import glob
import logging
import os
import tempfile

# Before anything imports prometheus_client: file-backed metrics summed over workers.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mlapi-prometheus-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
# numpy's BLAS threads would fight the workers for the cores (and can hang after fork).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import config as _config  # noqa: E402 (after the environment above; "config" is a gunicorn setting)

# Tracing (when OTEL_* variables name an exporter) starts its exporter thread in each
# worker after the fork (post_fork below), never in this master process; a wrong
# OTEL_* value stops the server here. Imported after the environment above is set.
from mlapi.observability import tracing  # noqa: E402

_log = logging.getLogger("gunicorn.error")
_settings = _config.checked_settings()
try:
    tracing.defer_start()
except _config.ConfigurationError as error:
    _config.exit_on_error(error)


def _whole(name, value, low=0):
    """gunicorn's numeric settings from the environment, refused like mlapi's own."""
    try:
        number = int(value)
        if number >= low:
            return number
    except ValueError:
        pass
    _config.exit_on_error(
        _config.refused(
            name,
            f"{name}={value!r} is not a whole number of at least {low}",
            f"Set {name} to a whole number of at least {low}, or unset it",
        )
    )


bind = (
    os.environ.get("GUNICORN_BIND")
    or f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
)
_requested_workers = _whole("WEB_CONCURRENCY", os.environ.get("WEB_CONCURRENCY", "1"), low=1)
# The resolved URL, so MLAPI_REDIS_URL_FILE (a mounted secret) counts too.
_shared_state = bool(_settings["REDIS_URL"])
workers = _requested_workers if _shared_state else 1
threads = _whole("GUNICORN_THREADS", os.environ.get("GUNICORN_THREADS", "4"), low=1)
# gthread, except that each request is read in full (head and body, within
# GUNICORN_REQUEST_READ_TIMEOUT seconds, else 408) before a thread sees it, so slow
# clients cannot hold the threads; see mlapi/worker.py. GUNICORN_WORKER_CLASS=gthread
# gives gunicorn's own worker back (for comparison; exposed to slow clients).
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "mlapi.worker.BufferingThreadWorker")
# Each slow client holds a connection (not a thread) until its read timeout; together
# they hold at most GUNICORN_MAX_BUFFERED_BYTES per worker (mlapi/worker.py reads it).
worker_connections = _whole(
    "GUNICORN_WORKER_CONNECTIONS", os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000")
)
timeout = _whole("GUNICORN_TIMEOUT", os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = _whole(
    "GUNICORN_GRACEFUL_TIMEOUT", os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30")
)
keepalive = _whole("GUNICORN_KEEPALIVE", os.environ.get("GUNICORN_KEEPALIVE", "5"))
# Worker recycling is off by default: a recycled worker re-imports the app (about 0.8 s),
# which showed as a p99 spike of half a second in the benchmark, and in the embedded mode
# the one worker holds the limits and the cache, which recycling would reset. Set
# GUNICORN_MAX_REQUESTS (with its jitter) to bound a memory leak, with Redis configured.
max_requests = _whole("GUNICORN_MAX_REQUESTS", os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = _whole(
    "GUNICORN_MAX_REQUESTS_JITTER", os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "1000")
)
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn's runtime control socket is unused here; its default path under $HOME would be
# shared by every instance on a host and is not writable in a read-only container.
control_socket_disable = True

# JSON logs on stdout: gunicorn's error log and one access line per request.
logger_class = "mlapi.observability.gunicorn.JsonLogger"
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = "-"
loglevel = _settings["LOG_LEVEL"].lower()
# Forwarded headers are handled by the app (MLAPI_TRUSTED_PROXIES), not by gunicorn.
forwarded_allow_ips = "127.0.0.1"

# Last, once every setting above is known good: wait for the database (bounded).
try:
    _config.wait_for_database(_settings["DATABASE_URL"], _settings["DB_WAIT_SECONDS"])
except _config.ConfigurationError as error:
    _config.exit_on_error(error)


def on_starting(server):
    """Once, in the master, before any worker: start metrics from zero."""
    if _requested_workers > 1 and not _shared_state:
        server.log.warning(
            "WEB_CONCURRENCY=%d ignored: without MLAPI_REDIS_URL limits and cache live in "
            "process memory, so mlapi runs 1 worker with %d threads to keep every limit exact. "
            "Set MLAPI_REDIS_URL to run more workers.",
            _requested_workers,
            threads,
        )
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def post_fork(server, worker):
    """In each new worker: /metrics reports the process metrics of the master and every
    worker, and the worker's trace exporter starts (a no-op when tracing is off)."""
    from mlapi.observability import metrics

    metrics.serve_as_worker_of(server.pid)
    tracing.start()


def worker_exit(server, worker):
    """A worker is stopping: send the spans it still holds (a no-op when tracing is off)."""
    tracing.shutdown()


def child_exit(server, worker):
    """A worker exited: drop its live gauges (its counters stay, so totals never fall)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """In each worker, once its app is loaded: poll the model repository on a thread."""
    from mlapi.predictions import start_polling

    # Only mlapi's app has a reloader (the bench serves a bare Flask app with this file too).
    if "mlapi.reloader" in getattr(worker.wsgi, "extensions", {}):
        start_polling(worker.wsgi)
