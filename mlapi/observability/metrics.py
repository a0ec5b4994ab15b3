"""Prometheus metrics: the metric objects, what counts them, and the exporter class.

Metrics are module-level prometheus_client objects. Under gunicorn,
``PROMETHEUS_MULTIPROC_DIR`` (set before the process starts, see
gunicorn.conf.py) makes them file-backed, and /metrics sums every worker.
prometheus-flask-exporter serves /metrics; its default metrics are off because
their names cannot be the tutorial's, so mlapi's request hooks record our own.
"""

import contextlib
import functools
import logging
import os
import platform
import subprocess
import sys

from flask_jwt_extended import current_user
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from mlapi import context
from mlapi.ids import process_id
from mlapi.observability import tracing
from mlapi.version import __version__

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
if MULTIPROCESS:
    # Each file-backed write asks for the process id to notice a fork; the default,
    # os.getpid, is a system call, six per request (prometheus_client 0.26's documented
    # MultiProcessValue argument; ValueClass is the module name its metrics read, pinned
    # in tests/unit/test_pinned_internals.py). Metrics created below use it.
    values.ValueClass = values.MultiProcessValue(process_identifier=process_id)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A small model answers in tens of microseconds: buckets from 10 us to 1 s (then 2.5, 5, 10).
MODEL_LATENCY_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip

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
    buckets=MODEL_LATENCY_BUCKETS,
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


_CACHE_OUTCOMES = {"hit": CACHE_HITS, "miss": CACHE_MISSES, "error": CACHE_ERRORS}


def count_cache(outcome):
    _CACHE_OUTCOMES[outcome].inc()


def bound_children(metric):
    """``metric.labels(*values)``, bound once per worker and label values (``labels()``
    validates and takes a lock on every call)."""
    children = {}

    def child(*values):
        found = children.get(values)
        if found is None:
            found = children[values] = metric.labels(*values)
        return found

    return child


_predictions = bound_children(PREDICTIONS)
_model_requests = bound_children(MODEL_REQUESTS)
_model_latency = bound_children(MODEL_LATENCY)
_model_batch = bound_children(MODEL_BATCH)


def count_prediction(model, version="unversioned", rows=1):
    """Count ``rows`` predictions of ``model`` served through API ``version`` (for the
    request's user, who is looked up only with MLAPI_METRICS_PER_USER)."""
    user = current_user.username if context.app().config["METRICS_PER_USER"] else ""
    _predictions(version, model.name, user).inc(rows)


def observe_model(model, seconds, rows=1, ok=True):
    """One call of a model: its latency and batch size if it succeeded, its outcome always."""
    name, version = model.name, model.version
    _model_requests(name, version, "success" if ok else "failure").inc()
    if ok:
        _model_latency(name, version).observe(seconds)
        _model_batch(name, version).observe(rows)


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


def build_commit():
    """The commit this build is from: MLAPI_BUILD_COMMIT (set when the image is built),
    else git's HEAD when the code is a checkout, else "unknown"."""
    commit = os.environ.get("MLAPI_BUILD_COMMIT", "").strip()
    if commit:
        return commit
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=os.path.dirname(__file__),
            capture_output=True,
            text=True,
            timeout=2,
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    return "unknown"


@functools.cache
def build_labels():
    return {"version": __version__, "commit": build_commit(), "python": platform.python_version()}


class BuildInfoCollector:
    """``mlapi_build_info``: always 1, labelled with the version, commit and Python."""

    def describe(self):
        return []

    def collect(self):
        labels = build_labels()
        family = GaugeMetricFamily(
            "mlapi_build_info",
            "mlapi's version, the commit it was built from, and the Python running it.",
            labels=list(labels),
        )
        family.add_metric(list(labels.values()), 1)
        yield family


class TracingCollector:
    """``mlapi_tracing_active`` and ``mlapi_opentelemetry_modules`` of the process answering
    the scrape, labelled by its pid: with tracing off no OpenTelemetry module is loaded, so
    it costs the requests nothing (bench/run reports both)."""

    def describe(self):
        return []

    def collect(self):
        pid = [str(os.getpid())]
        active = GaugeMetricFamily(
            "mlapi_tracing_active",
            "1 when this process exports spans (OTEL_* variables name an exporter), else 0.",
            labels=["pid"],
        )
        active.add_metric(pid, int(tracing.active()))
        modules = GaugeMetricFamily(
            "mlapi_opentelemetry_modules",
            "OpenTelemetry modules this process has imported (0 with tracing off).",
            labels=["pid"],
        )
        loaded = [name for name in list(sys.modules) if name.split(".")[0] == "opentelemetry"]
        modules.add_metric(pid, len(loaded))
        yield active
        yield modules


class WorkerProcessCollector:
    """``process_*`` series of the gunicorn master and each live worker, labelled by pid.

    prometheus_client's ProcessCollector reports only the process that answers the scrape,
    so under gunicorn it shows one random worker. This collector reads every live
    process of the server with psutil at scrape time instead.
    """

    def __init__(self, master_pid):
        self.master_pid = master_pid

    def describe(self):
        return []

    def processes(self):
        import psutil

        if self.master_pid is None:
            return [("worker", psutil.Process())]
        try:
            master = psutil.Process(self.master_pid)
            return [("master", master), *(("worker", child) for child in master.children())]
        except psutil.Error:
            return [("worker", psutil.Process())]

    def collect(self):
        import psutil

        labels = ["pid", "role"]
        families = {
            "rss": GaugeMetricFamily(
                "process_resident_memory_bytes", "Resident memory size in bytes.", labels=labels
            ),
            "vms": GaugeMetricFamily(
                "process_virtual_memory_bytes", "Virtual memory size in bytes.", labels=labels
            ),
            "cpu": CounterMetricFamily(
                "process_cpu_seconds", "User and system CPU time in seconds.", labels=labels
            ),
            "fds": GaugeMetricFamily(
                "process_open_fds", "Number of open file descriptors.", labels=labels
            ),
            "max_fds": GaugeMetricFamily(
                "process_max_fds", "Maximum number of open file descriptors.", labels=labels
            ),
            "start": GaugeMetricFamily(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                labels=labels,
            ),
        }
        for role, process in self.processes():
            try:
                with process.oneshot():
                    memory = process.memory_info()
                    cpu = process.cpu_times()
                    values = {
                        "rss": memory.rss,
                        "vms": memory.vms,
                        "cpu": cpu.user + cpu.system,
                        "fds": process.num_fds(),
                        "max_fds": process.rlimit(psutil.RLIMIT_NOFILE)[0],
                        "start": process.create_time(),
                    }
            except psutil.Error:  # exited (or recycled) between listing and reading
                continue
            for key, value in values.items():
                families[key].add_metric([str(process.pid), role], value)
        yield from families.values()


_master_pid = None


def serve_as_worker_of(master_pid):
    """Called in each gunicorn worker: report the process metrics of the whole server."""
    global _master_pid
    _master_pid = master_pid


def register_process_collectors():
    """Build info and tracing's state always; per-process metrics in multiprocess mode (without it,
    prometheus_client's own ProcessCollector already reports the one process)."""
    register_collector(BuildInfoCollector())
    register_collector(TracingCollector())
    if MULTIPROCESS:
        register_collector(WorkerProcessCollector(_master_pid))


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
