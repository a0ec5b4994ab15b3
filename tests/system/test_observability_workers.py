"""Metrics that add up across gunicorn workers, structured access logs, and honest probes."""

import subprocess
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import metric, promtool
from tests.system.servers import wait_until

PASSWORD = "observe-pass-12"


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
    # start() returns once one worker answers; the other three may still be booting.
    wait_until(lambda: len(server.worker_pids()) == 4, timeout=30, what="four workers")
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
    from tests.system.servers import TCPProxy

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
