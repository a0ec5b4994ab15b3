"""Kubernetes-style probes: liveness, readiness with real checks, and host figures."""

import concurrent.futures
import logging
import time

import sqlalchemy as sa
from flask import Blueprint, current_app
from spectree import Response

from mlapi.api.docs import describe
from mlapi.api.schemas import HostFigures, Liveness, Readiness
from mlapi.extensions import db, limiter
from mlapi.observability.metrics import record_readiness
from mlapi.predictions import registry

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__, url_prefix="/health")

# Checks run here so that a hung dependency costs the probe its timeout, not a worker.
_checks_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ready")


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
    """Readiness: models loaded, database answering, Redis answering when configured."""
    checks = run_checks(current_app._get_current_object())
    ok = all(check["status"] == "ok" for check in checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return body, 200 if ok else 503, {"Cache-Control": "no-store"}


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


def run_checks(app):
    """Run every readiness check concurrently, each bounded by READY_CHECK_TIMEOUT."""
    checks = {"models": check_models, "database": check_database}
    if app.config.get("REDIS_URL"):
        checks["redis"] = check_redis
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
    record_readiness(results)
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
    loaded = [f"{m.name}:{m.version}" for m in registry()]
    if not loaded:
        raise RuntimeError("no model is loaded")
    return {"models": loaded}


def check_database(app):
    with db.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def check_redis(app):
    app.extensions["mlapi.redis"].ping()
