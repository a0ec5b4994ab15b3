"""Probes: liveness checks the process only; readiness checks what serving needs."""

import pytest


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
    assert body["required"] == ["database", "models"]
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


def test_unreachable_redis_leaves_the_service_ready_but_degraded(make_app):
    """Redis is optional by default: readiness stays 200, says "degraded" and names redis,
    within a second."""
    import time

    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    started = time.monotonic()
    response = app.test_client().get("/health/ready")
    assert time.monotonic() - started < 1.0
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["required"] == ["database", "models"]
    assert body["checks"]["redis"]["status"] == "fail"
    assert body["checks"]["database"]["status"] == "ok"
    assert app.test_client().get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("required", ["database,models,redis", ["redis", "database"]])
def test_redis_can_be_required_for_readiness(make_app, required):
    """MLAPI_READY_REQUIRES naming redis makes an unreachable Redis a 503 with Retry-After."""
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0", READY_REQUIRES=required)
    response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["status"] == "not ready"
    protocol = app.test_client().get("/v2/health/ready")
    assert protocol.status_code == 503
    assert protocol.headers["Retry-After"] == "1"


def test_models_can_be_left_out_of_readiness(make_app, tmp_path):
    """With READY_REQUIRES=database only the database decides readiness."""
    app = make_app(READY_REQUIRES="database")
    assert app.test_client().get("/health/ready").get_json()["required"] == ["database"]


@pytest.mark.parametrize("required", ["database,redis", "database,cache"])
def test_requiring_an_unknown_check_refuses_to_start(make_app, required):
    """A check this configuration does not run (redis without MLAPI_REDIS_URL, a typo)."""
    with pytest.raises(ValueError, match="MLAPI_READY_REQUIRES"):
        make_app(READY_REQUIRES=required)


def test_readiness_metrics_are_fresh_at_scrape_time(make_app):
    """/metrics runs the checks itself: no call to /health/ready is needed."""
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'readiness_check_ok{check="redis"} 0.0' in text
    assert 'readiness_check_ok{check="database"} 1.0' in text
    assert 'readiness_status{status="degraded"} 1.0' in text
    assert 'readiness_status{status="ready"} 0.0' in text


def test_host_metrics_from_psutil(client):
    """GET /health/metrics reports CPU, memory and disk percentages."""
    body = client.get("/health/metrics").get_json()
    for key in ("cpu_percent", "memory_percent", "disk_percent"):
        assert 0 <= body[key] <= 100
    assert body["process"]["rss_bytes"] > 0


def test_readiness_is_never_cached(client):
    """Readiness answers say no-store, so no proxy replays a stale state."""
    assert client.get("/health/ready").headers["Cache-Control"] == "no-store"
