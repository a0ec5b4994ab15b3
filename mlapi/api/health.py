"""Kubernetes-style probes: liveness, readiness with real checks, and host figures.

Readiness runs one check per dependency. Those named in ``READY_REQUIRES`` (by default
models and database) decide readiness; any other check that fails (Redis: limits fall
back to per-worker memory and the cache is skipped, so the service still answers) makes
the pod "degraded" but keeps it in the load balancer. Prometheus reads the same checks,
run at scrape time, as ``readiness_check_ok{check}`` and ``readiness_status{status}``.
"""

import concurrent.futures
import logging
import time

from flask import Blueprint, current_app, g
from prometheus_client.core import GaugeMetricFamily

from mlapi.api.docs import Response, describe
from mlapi.api.schemas import HostFigures, Liveness, Readiness
from mlapi.extensions import db, limiter
from mlapi.observability.metrics import register_collector
from mlapi.predictions import registry

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__, url_prefix="/health")

# Checks run here so that a hung dependency costs the probe its timeout, not a worker.
_checks_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ready")
STATUSES = ("ready", "degraded", "not ready")


@bp.get("/live")
@limiter.exempt
@describe(resp=Response(HTTP_200=Liveness), tags=["health"])
def live():
    """Liveness: the process answers. Checks nothing else: an outage must not restart it."""
    return {"status": "alive"}


@bp.get("/ready")
@limiter.exempt
@describe(resp=Response(HTTP_200=Readiness, HTTP_503=Readiness), tags=["health"])
def ready():
    """Readiness: models loaded, database answering, Redis answering when configured.

    200 "ready", 200 "degraded" (an optional dependency fails), or 503 "not ready".
    """
    app = current_app._get_current_object()
    checks = run_checks(app)
    status = verdict(app, checks)
    body = {"status": status, "required": required_checks(app), "checks": checks}
    if status == "not ready":
        g.retry_after = 1  # kept by limits.strip_retry_after
        return body, 503, {"Cache-Control": "no-store"}
    return body, 200, {"Cache-Control": "no-store"}


@bp.get("/metrics")
@limiter.exempt
@describe(resp=Response(HTTP_200=HostFigures), tags=["health"])
def host_metrics():
    """CPU, memory and disk use of the host, and this worker's own figures (psutil)."""
    import psutil  # only this probe uses it: not loaded in workers never asked

    process = psutil.Process()
    with process.oneshot():
        rss = process.memory_info().rss
        threads = process.num_threads()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
        "disk_percent": psutil.disk_usage("/").percent,
        "process": {"pid": process.pid, "rss_bytes": rss, "threads": threads},
    }


def required_checks(app):
    """The checks that decide readiness (``READY_REQUIRES``: a list or "a,b")."""
    value = app.config["READY_REQUIRES"]
    names = value.split(",") if isinstance(value, str) else value
    return [name.strip() for name in names if name.strip()]


def verdict(app, checks):
    """ "ready", "degraded" (only optional checks fail) or "not ready"."""
    failed = {name for name, check in checks.items() if check["status"] != "ok"}
    if not failed:
        return "ready"
    return "not ready" if failed & set(required_checks(app)) else "degraded"


def available_checks(app):
    checks = {"models": check_models, "database": check_database}
    if app.config.get("REDIS_URL"):
        checks["redis"] = check_redis
    return checks


def run_checks(app):
    """Run every readiness check concurrently, each bounded by READY_CHECK_TIMEOUT."""
    checks = available_checks(app)
    timeout = app.config["READY_CHECK_TIMEOUT"]
    futures = {name: _checks_pool.submit(_timed, app, fn) for name, fn in checks.items()}
    deadline = time.monotonic() + timeout
    results = {}
    for name, future in futures.items():
        try:
            results[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            results[name] = {"status": "fail", "error": f"timed out after {timeout}s"}
    for name, result in results.items():
        if result["status"] != "ok":
            log.warning("readiness check %s failed: %s", name, result.get("error"))
    return results


def _timed(app, check):
    started = time.perf_counter()
    try:
        with app.app_context():
            detail = check(app)
    except Exception as exc:
        return {"status": "fail", "error": f"{type(exc).__name__}: {exc}"[:200]}
    result = {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    if detail:
        result.update(detail)
    return result


def check_models(app):
    """Every served model version, and each model or version that failed to load, with why.

    A broken model does not make the service unready: the others serve, and
    /v2/models/<name>/ready answers for that one.
    """
    models = registry()
    loaded = [f"{m.name}:{m.version}" for m in models]
    if not loaded:
        raise RuntimeError("no model is loaded")
    return {"models": loaded, "unavailable": dict(models.snapshot.failures)}


def check_database(app):
    # A real table: SQLite answers SELECT 1 without opening the file, so it would not
    # see another process's lock on it.
    with db.connect() as conn:
        conn.execute("SELECT 1 FROM users LIMIT 1")


def check_redis(app):
    app.extensions["mlapi.redis"].ping()


class ReadinessCollector:
    """``readiness_check_ok{check}`` and ``readiness_status{status}``, checked at scrape time,
    so the metrics are fresh whether or not anything calls /health/ready."""

    def __init__(self, app):
        self.app = app

    def describe(self):
        return []

    def collect(self):
        checks = run_checks(self.app)
        ok = GaugeMetricFamily(
            "readiness_check_ok", "1 if the readiness check passes, else 0.", labels=["check"]
        )
        for name, check in checks.items():
            ok.add_metric([name], 1 if check["status"] == "ok" else 0)
        yield ok
        current = verdict(self.app, checks)
        status = GaugeMetricFamily(
            "readiness_status",
            "1 for the readiness status now (ready, degraded, not ready), else 0.",
            labels=["status"],
        )
        for name in STATUSES:
            status.add_metric([name], 1 if name == current else 0)
        yield status


def check_required(app):
    """Refuse to start when READY_REQUIRES names a check this configuration lacks."""
    unknown = set(required_checks(app)) - set(available_checks(app))
    if unknown:
        raise ValueError(
            f"MLAPI_READY_REQUIRES names {', '.join(sorted(unknown))}, which is not checked "
            f"here (checks: {', '.join(available_checks(app))}; redis needs MLAPI_REDIS_URL)"
        )


def init_app(app):
    """Check READY_REQUIRES and put the readiness checks into /metrics (the blueprint is
    registered with the others in mlapi.api)."""
    check_required(app)
    register_collector(ReadinessCollector(app))
