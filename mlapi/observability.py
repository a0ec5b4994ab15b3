"""Request ids, JSON logs and Prometheus metrics.

Metrics are module-level prometheus_client objects. Under gunicorn,
``PROMETHEUS_MULTIPROC_DIR`` (set before the process starts, see
gunicorn.conf.py) makes them file-backed, and /metrics sums every worker.
prometheus-flask-exporter serves /metrics; its default metrics are off because
their names cannot be the tutorial's, so the hooks here record our own.
"""

import logging
import os
import re
import sys
import time
import uuid

from flask import current_app, g, has_request_context, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics
from pythonjsonlogger.json import JsonFormatter

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "api_requests_total",
    "HTTP requests handled, by route template and status.",
    ["method", "endpoint", "status"],
)
REQUEST_LATENCY = Histogram(
    "api_request_duration_seconds",
    "HTTP request latency in seconds, by route template.",
    ["method", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "api_requests_in_flight", "HTTP requests being served now.", multiprocess_mode="livesum"
)
PREDICTIONS = Counter(
    "predictions_total",
    "Predictions served, by API version and model; user is empty unless MLAPI_METRICS_PER_USER.",
    ["version", "model", "user"],
)
MODEL_LATENCY = Histogram(
    "model_inference_seconds",
    "Time spent inside a model's predict, by model and version.",
    ["model", "model_version"],
    buckets=LATENCY_BUCKETS,
)
CACHE_HITS = Counter("cache_hits_total", "Prediction cache hits.")
CACHE_MISSES = Counter("cache_misses_total", "Prediction cache misses.")
CACHE_ERRORS = Counter(
    "cache_errors_total", "Prediction cache operations that failed (cache bypassed)."
)
RATE_LIMITED = Counter(
    "rate_limit_rejections_total", "Requests refused with 429, by route template.", ["endpoint"]
)
AUTH_FAILURES = Counter("auth_failures_total", "Authentication failures, by reason.", ["reason"])

UNMATCHED = "<unmatched>"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
EXPORTER_ENDPOINT = "prometheus_metrics"

_extra_collectors = []


def count_auth_failure(reason):
    AUTH_FAILURES.labels(reason).inc()


def count_cache(outcome):
    {"hit": CACHE_HITS, "miss": CACHE_MISSES, "error": CACHE_ERRORS}[outcome].inc()


def count_prediction(model, username, version="unversioned", rows=1):
    """Count ``rows`` predictions of ``model`` served through API ``version``."""
    user = username if current_app.config["METRICS_PER_USER"] else ""
    PREDICTIONS.labels(version, model.name, user).inc(rows)


def observe_model(model, seconds):
    MODEL_LATENCY.labels(model.name, model.version).observe(seconds)


def route():
    """The matched route template, never the raw path (bounded label values)."""
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


class ActiveUsersCollector:
    """``active_users``: distinct users seen in the window, read at scrape time."""

    def __init__(self, count):
        self._count = count

    def describe(self):
        return []

    def collect(self):
        try:
            value = self._count()
        except Exception:
            logging.getLogger(__name__).warning("active_users unavailable", exc_info=True)
            return
        yield GaugeMetricFamily(
            "active_users", "Users with an authenticated request in the last window.", value=value
        )


class MultiprocessMetrics(GunicornInternalPrometheusMetrics):
    """The exporter in multiprocess mode, keeping our scrape-time collectors in the output."""

    def generate_metrics(self, accept_header=None, names=None):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        for collector in _extra_collectors:
            registry.register(collector)
        if names:
            registry = registry.restricted_registry(names)
        encode, content_type = choose_encoder(accept_header)
        return encode(registry).decode("utf-8"), content_type


def register_collector(collector):
    """Add a scrape-time collector once per process (the app factory may run many times)."""
    for existing in list(_extra_collectors):
        if type(existing) is type(collector):
            _extra_collectors.remove(existing)
            if not MULTIPROCESS:
                REGISTRY.unregister(existing)
    _extra_collectors.append(collector)
    if not MULTIPROCESS:
        REGISTRY.register(collector)


# --- request hooks ---------------------------------------------------------------


def start_request():
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request.environ["mlapi.request_id"] = g.request_id
    if request.endpoint != EXPORTER_ENDPOINT:
        IN_FLIGHT.inc()
        g.in_flight = True


def finish_request(response):
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    response.headers["X-Request-ID"] = g.get("request_id", "")
    response.headers["X-Process-Time"] = f"{elapsed:.6f}"
    endpoint = route()
    request.environ["mlapi.route"] = endpoint
    if request.endpoint != EXPORTER_ENDPOINT and not g.get("counted"):
        g.counted = True
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
        REQUEST_LATENCY.labels(method, endpoint).observe(elapsed)
        if response.status_code == 429:
            RATE_LIMITED.labels(endpoint).inc()
    return response


def end_request(_exc):
    if g.pop("in_flight", False):
        IN_FLIGHT.dec()


# --- logging ---------------------------------------------------------------------


class RequestContextFilter(logging.Filter):
    """Add the request's id, method, route, user and client address to every log record."""

    def filter(self, record):
        if has_request_context():
            record.request_id = g.get("request_id")
            record.method = request.method
            record.route = route()
            record.client = request.remote_addr
            user = request.environ.get("mlapi.user")
            if user:
                record.user = user
        return True


def json_formatter():
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_logging(level):
    """One JSON object per line on stdout for every logger, at ``level``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "mlapi", False):
            root.removeHandler(existing)
    handler.mlapi = True
    root.addHandler(handler)
    root.setLevel(level)
    # Schema checks run at every start; their INFO lines are noise there.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


def init_app(app):
    configure_logging(app.config["LOG_LEVEL"])
    exporter_class = MultiprocessMetrics if MULTIPROCESS else PrometheusMetrics
    exporter = exporter_class.for_app_factory(export_defaults=False)
    exporter.init_app(app)
    app.extensions["mlapi.observe_model"] = observe_model
    active = ActiveUsers(
        app.config["ACTIVE_USER_WINDOW_SECONDS"],
        redis=app.extensions.get("mlapi.redis"),
        breaker=app.extensions.get("mlapi.redis_breaker"),
        key=app.config["REDIS_KEY_PREFIX"] + "active_users",
    )
    app.extensions["mlapi.active_users"] = active
    register_collector(ActiveUsersCollector(active.count))
    # First, so the id and clock exist before the limiter and JWT hooks run.
    app.before_request_funcs.setdefault(None, []).insert(0, start_request)
    app.after_request(finish_request)
    app.teardown_request(end_request)


# --- active users ----------------------------------------------------------------


class ActiveUsers:
    """Who made an authenticated request recently: a Redis sorted set shared by every
    worker and host, or a dict in the embedded single-process mode.

    Each process writes a user's timestamp at most every ``refresh`` seconds, so the
    bookkeeping costs one Redis round trip per user per interval, not per request.
    """

    def __init__(self, window, redis=None, breaker=None, key="active_users", refresh=10.0):
        self.window = window
        self.redis = redis
        self.breaker = breaker
        self.key = key
        self.refresh = refresh
        self._seen = {}

    def touch(self, username):
        now = time.time()
        if now - self._seen.get(username, 0.0) < self.refresh:
            return
        self._seen[username] = now
        if self.redis is not None:
            try:
                self.breaker.call(self.redis.zadd, self.key, {username: now})
            except Exception:
                logging.getLogger(__name__).debug("could not record activity", exc_info=True)

    def count(self):
        cutoff = time.time() - self.window
        if self.redis is None:
            return sum(1 for seen in list(self._seen.values()) if seen >= cutoff)
        self.redis.zremrangebyscore(self.key, "-inf", cutoff)
        return self.redis.zcard(self.key)
