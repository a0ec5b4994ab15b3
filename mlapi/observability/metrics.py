"""Prometheus metrics: the metric objects, what counts them, and the exporter class.

Metrics are module-level prometheus_client objects. Under gunicorn,
``PROMETHEUS_MULTIPROC_DIR`` (set before the process starts, see
gunicorn.conf.py) makes them file-backed, and /metrics sums every worker.
prometheus-flask-exporter serves /metrics; its default metrics are off because
their names cannot be the tutorial's, so mlapi's request hooks record our own.
"""

import logging
import os

from flask import current_app
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

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
MODEL_REQUESTS = Counter(
    "model_requests_total",
    "Calls of a model's predict or infer, by model, version and outcome (success or failure).",
    ["model", "model_version", "outcome"],
)
MODEL_BATCH = Histogram(
    "model_batch_size",
    "Rows per call of a model, by model and version.",
    ["model", "model_version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
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

_extra_collectors = []


def count_auth_failure(reason):
    AUTH_FAILURES.labels(reason).inc()


def count_cache(outcome):
    {"hit": CACHE_HITS, "miss": CACHE_MISSES, "error": CACHE_ERRORS}[outcome].inc()


def count_prediction(model, username, version="unversioned", rows=1):
    """Count ``rows`` predictions of ``model`` served through API ``version``."""
    user = username if current_app.config["METRICS_PER_USER"] else ""
    PREDICTIONS.labels(version, model.name, user).inc(rows)


def observe_model(model, seconds, rows=1, ok=True):
    """One call of a model: its latency and batch size if it succeeded, its outcome always."""
    labels = (model.name, model.version)
    MODEL_REQUESTS.labels(*labels, "success" if ok else "failure").inc()
    if ok:
        MODEL_LATENCY.labels(*labels).observe(seconds)
        MODEL_BATCH.labels(*labels).observe(rows)


def model_statistics(name, version):
    """The statistics extension's entry for one model version, from the metrics above.

    Under gunicorn the numbers are summed over every worker's files, as /metrics does.
    """
    if MULTIPROCESS:
        source = CollectorRegistry()
        MultiProcessCollector(source)
    else:
        source = REGISTRY
    totals = {}
    wanted = {"model_requests_total", "model_inference_seconds_sum", "model_batch_size_sum"}
    for family in source.collect():
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name in wanted
                and labels.get("model") == name
                and labels.get("model_version") == version
            ):
                key = (sample.name, labels.get("outcome"))
                totals[key] = totals.get(key, 0.0) + sample.value
    successes = int(totals.get(("model_requests_total", "success"), 0))
    failures = int(totals.get(("model_requests_total", "failure"), 0))
    seconds = totals.get(("model_inference_seconds_sum", None), 0.0)
    return {
        "name": name,
        "version": version,
        "inference_count": int(totals.get(("model_batch_size_sum", None), 0)),
        "execution_count": successes,
        "inference_stats": {
            "success": {"count": successes, "ns": int(seconds * 1e9)},
            "fail": {"count": failures, "ns": 0},
        },
    }


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
