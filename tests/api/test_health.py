"""Probes: liveness checks the process only; readiness checks what serving needs."""


def test_live_is_alive(client):
    """GET /health/live answers {"status": "alive"}."""
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.get_json() == {"status": "alive"}


def test_ready_names_each_check(client):
    """GET /health/ready lists models and database, each ok, and says ready."""
    response = client.get("/health/ready")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"models", "database"}
    assert all(check["status"] == "ok" for check in body["checks"].values())
    assert body["checks"]["models"]["models"] == ["average:1.0", "weighted_average:2.0"]


def test_ready_fails_when_the_database_is_gone(app_without_database):
    """A database that can no longer be opened makes readiness 503 naming the database check."""
    app = app_without_database
    response = app.test_client().get("/health/ready")
    body = response.get_json()
    assert response.status_code == 503
    assert body["status"] == "not ready"
    assert body["checks"]["database"]["status"] == "fail"
    assert body["checks"]["models"]["status"] == "ok"
    assert app.test_client().get("/health/live").status_code == 200


def test_ready_fails_fast_when_redis_is_unreachable(make_app):
    """With Redis configured but unreachable, readiness is 503 within a second, naming redis."""
    import time

    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    started = time.monotonic()
    response = app.test_client().get("/health/ready")
    assert time.monotonic() - started < 1.0
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"]["status"] == "fail"


def test_host_metrics_from_psutil(client):
    """GET /health/metrics reports CPU, memory and disk percentages."""
    body = client.get("/health/metrics").get_json()
    for key in ("cpu_percent", "memory_percent", "disk_percent"):
        assert 0 <= body[key] <= 100
    assert body["process"]["rss_bytes"] > 0


def test_readiness_is_never_cached(client):
    """Readiness answers say no-store, so no proxy replays a stale state."""
    assert client.get("/health/ready").headers["Cache-Control"] == "no-store"
