"""Metrics that add up across workers, structured access logs, and honest probes."""

import os
import re
import shutil
import subprocess
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import client_for

PASSWORD = "observe-pass-12"


def metric(text, name, **labels):
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        if sample.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def promtool():
    path = shutil.which("promtool")
    if path:
        return path
    message = "promtool is not installed (Debian package: prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; under CI=true this is a failure, not a skip")
    pytest.skip(message)


# --- in-process ---------------------------------------------------------------------


def scrape(client):
    return client.get("/metrics").get_data(as_text=True)


def test_metrics_use_route_templates_not_raw_paths(client, auth):
    """Labels carry route templates; a scanner's random paths collapse into <unmatched>."""
    before = scrape(client)
    for n in range(5):
        client.get(f"/random-scan-{n}")
    client.post("/v1/predict", json=[1], headers=auth)
    after = scrape(client)
    assert "random-scan" not in after
    unmatched = {"endpoint": "<unmatched>", "status": "404"}
    assert (
        metric(after, "api_requests_total", **unmatched)
        - metric(before, "api_requests_total", **unmatched)
        == 5
    )
    v1 = {"endpoint": "/v1/predict", "method": "POST", "status": "200"}
    assert (
        metric(after, "api_requests_total", **v1) - metric(before, "api_requests_total", **v1) == 1
    )


def test_tutorial_metrics_are_exposed(client, auth, admin_auth):
    """The tutorial's metric names exist with their meaning, plus the operator's extras."""
    before = scrape(client)
    client.post("/v2/predict-monitored", json=[1, 2], headers=auth)
    client.post("/predict-cached", json=[9, 8, 7], headers=auth)
    client.post("/predict-cached", json=[9, 8, 7], headers=auth)
    client.get("/users/me", headers={"Authorization": "Bearer nope"})
    client.get("/users/me", headers=admin_auth)
    client.get("/health/ready")
    after = scrape(client)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("predictions_total", version="v2", model="average") == 1
    assert grew("predictions_total", version="unversioned", model="average") == 2
    assert grew("cache_hits_total") == 1 and grew("cache_misses_total") == 1
    assert grew("auth_failures_total", reason="invalid_token") == 1
    assert grew("model_inference_seconds_count", model="average", model_version="1.0") == 2
    assert metric(after, "active_users") == 2
    assert metric(after, "readiness_check_ok", check="database") == 1
    assert "api_request_duration_seconds_bucket" in after
    assert "api_requests_in_flight" in after


def test_rate_limit_rejections_are_counted(client):
    """Each 429 increments rate_limit_rejections_total for its route."""
    before = metric(scrape(client), "rate_limit_rejections_total", endpoint="/public")
    for _ in range(7):
        client.get("/public")
    after = metric(scrape(client), "rate_limit_rejections_total", endpoint="/public")
    assert after - before == 2


def test_per_user_series_are_off_by_default(client, auth):
    """predictions_total has an empty user label unless METRICS_PER_USER is on."""
    client.post("/predict", json=[1], headers=auth)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'user="alice"' not in text


def test_per_user_series_when_enabled(make_app):
    """With METRICS_PER_USER, predictions_total is split by user."""
    client, headers = client_for(make_app(METRICS_PER_USER=True), "carol")
    client.post("/predict", json=[1], headers=headers)
    assert 'user="carol"' in client.get("/metrics").get_data(as_text=True)


def test_metrics_pass_promtool(client, auth):
    """promtool check metrics accepts the exposition."""
    client.post("/v1/predict", json=[1], headers=auth)
    text = client.get("/metrics").get_data(as_text=True)
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_request_id_appears_in_every_log_line_of_the_request(client, auth, caplog):
    """App log lines emitted during a request carry its request id, method and route."""
    import logging

    caplog.set_level(logging.WARNING)
    client.post(
        "/token",
        data={"username": "x", "password": "wrong-password"},
        headers={"X-Request-ID": "trace-me-1"},
    )
    app_lines = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-me-1"]
    assert all(r.route == "/token" and r.method == "POST" for r in app_lines)


# --- gunicorn, several workers --------------------------------------------------------


@pytest.fixture
def four_workers(servers, redis_url, tmp_path):
    env = {
        "MLAPI_REDIS_URL": redis_url,
        "MLAPI_REDIS_KEY_PREFIX": f"mlapi-test-{uuid.uuid4().hex[:8]}:",
        "WEB_CONCURRENCY": "4",
        "MLAPI_PREDICT_RATE_LIMIT": "100000/minute",
    }
    server = servers(env=env, create=False)
    assert server.flask("users", "create", "alice", "--password", PASSWORD).returncode == 0
    server.start()
    assert len(server.worker_pids()) == 4
    return server


@pytest.mark.slow
@pytest.mark.redis
def test_counts_add_up_across_four_workers_and_in_the_access_log(four_workers):
    """N requests over 4 workers appear exactly N times on every scrape and in the access log."""
    server = four_workers
    headers = server.token("alice", PASSWORD)
    n = 120
    session = requests.Session()
    seen = set()
    for i in range(n):
        response = session.post(
            server.url("/v1/predict"),
            json=[i],
            headers={**headers, "X-Request-ID": f"req-{i}"},
            timeout=10,
        )
        assert response.status_code == 200
        seen.add(response.headers["X-Request-ID"])
    assert len(seen) == n
    for _ in range(4):
        text = requests.get(server.url("/metrics"), timeout=10).text
        assert (
            metric(text, "api_requests_total", endpoint="/v1/predict", method="POST", status="200")
            == n
        )
        assert metric(text, "api_request_duration_seconds_count", endpoint="/v1/predict") == n
        assert metric(text, "predictions_total", version="v1", model="average") == n
        assert metric(text, "api_requests_in_flight") == 0
    assert metric(text, "active_users") == 1

    def access_lines():
        return [
            line
            for line in server.log_lines()
            if line.get("logger") == "gunicorn.access" and line.get("route") == "/v1/predict"
        ]

    deadline = time.monotonic() + 5
    while len(access_lines()) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = access_lines()
    assert len(lines) == n
    assert {line["request_id"] for line in lines} == seen
    for line in lines:
        assert line["status"] == 200 and line["method"] == "POST" and line["user"] == "alice"
        assert line["level"] == "INFO" and line["duration"] >= 0 and line["client"] == "127.0.0.1"
        assert {"time", "message"} <= set(line)
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.postgres
def test_readiness_flips_when_the_database_goes_and_returns(servers, postgres_url):
    """Readiness is 503 naming the database while it is unreachable, and 200 once it is back."""
    from tests.servers import TCPProxy

    target = urlsplit(postgres_url.replace("postgresql+psycopg", "postgresql"))
    proxy = TCPProxy(target.hostname, target.port)
    proxied = postgres_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
    try:
        server = servers(env={"MLAPI_DATABASE_URL": proxied})
        assert requests.get(server.url("/health/ready"), timeout=10).status_code == 200
        proxy.cut()
        server.assert_unready("database", within=1.5)
        login = requests.post(
            server.url("/token"), data={"username": "a", "password": "b" * 9}, timeout=10
        )
        assert login.status_code == 503
        proxy.restore()
        server.wait_ready()
    finally:
        proxy.close()


@pytest.mark.slow
def test_probes_are_not_logged_at_info(servers):
    """Probes and scrapes leave no info-level access lines; API calls do."""
    server = servers()
    for path in ("/health/live", "/health/ready", "/metrics", "/health/metrics"):
        for _ in range(3):
            requests.get(server.url(path), timeout=10)
    requests.get(server.url("/"), timeout=10)
    time.sleep(0.3)
    routes = [
        line.get("route") for line in server.log_lines() if line.get("logger") == "gunicorn.access"
    ]
    assert routes == ["/"]
