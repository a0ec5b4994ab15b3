"""One service across workers and hosts: shared Redis and PostgreSQL, faults survived."""

import concurrent.futures
import json
import signal
import socket
import time
import uuid

import pytest
import requests

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

PASSWORD = "scale-out-pass-1"


@pytest.fixture
def cluster(servers, redis_url, postgres_url):
    """Two gunicorn instances with two workers each, sharing one Redis and one PostgreSQL."""
    env = {
        "MLAPI_REDIS_URL": redis_url,
        "MLAPI_REDIS_KEY_PREFIX": f"mlapi-test-{uuid.uuid4().hex[:8]}:",
        "MLAPI_DATABASE_URL": postgres_url,
        "WEB_CONCURRENCY": "2",
    }
    first = servers(env=env, name="host-a", create=False)
    assert first.flask("users", "create", "alice", "--password", PASSWORD).returncode == 0
    assert first.flask("users", "create", "root", "--admin", "--password", PASSWORD).returncode == 0
    first.start()
    second = servers(env=env, name="host-b")
    assert len(first.worker_pids()) == len(second.worker_pids()) == 2
    return first, second


def test_limits_are_exact_across_four_workers_on_two_instances(cluster):
    """30 concurrent requests to a 10-per-minute endpoint over 2x2 workers: exactly 10 pass."""
    first, second = cluster
    headers = first.token("alice", PASSWORD)

    def call(n):
        server = (first, second)[n % 2]
        return requests.post(
            server.url("/predict-limited"), json=[n], headers=headers, timeout=10
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(call, range(30)))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20


def test_cache_filled_on_one_instance_is_hit_on_the_other(cluster):
    """The prediction cache is shared: a miss on host A is a hit on host B."""
    first, second = cluster
    headers = first.token("alice", PASSWORD)
    miss = requests.post(first.url("/predict-cached"), json=[3, 4], headers=headers, timeout=10)
    hit = requests.post(second.url("/predict-cached"), json=[3, 4], headers=headers, timeout=10)
    assert miss.json()["cached"] is False
    assert hit.json() == {"prediction": 3.5, "user": "alice", "cached": True}


def test_logout_on_one_instance_is_honoured_by_the_other(cluster):
    """A token revoked through host A is refused at once by every worker of host B."""
    first, second = cluster
    headers = first.token("alice", PASSWORD)
    assert requests.get(second.url("/users/me"), headers=headers, timeout=10).status_code == 200
    assert requests.post(first.url("/logout"), headers=headers, timeout=10).status_code == 200
    for _ in range(6):
        refused = requests.get(second.url("/users/me"), headers=headers, timeout=10)
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_token_from_one_instance_works_on_the_other(cluster):
    """Instances share the signing secret and the user database."""
    first, second = cluster
    headers = first.token("alice", PASSWORD)
    response = requests.post(second.url("/v1/predict"), json=[2, 4], headers=headers, timeout=10)
    assert response.json()["prediction"] == 3.0


@pytest.fixture
def redis_backed(servers, redis_server, postgres_url):
    """One instance with two workers on a private Redis the test can stop and restart."""
    env = {
        "MLAPI_REDIS_URL": redis_server.url,
        "MLAPI_DATABASE_URL": postgres_url,
        "WEB_CONCURRENCY": "2",
        "MLAPI_PREDICT_LIMITED_RATE_LIMIT": "1000/minute",
    }
    server = servers(env=env, create=False)
    assert server.flask("users", "create", "alice", "--password", PASSWORD).returncode == 0
    return server.start()


def test_redis_outage_is_survived_and_recovered(redis_backed, redis_server):
    """Redis stopped mid-traffic: no 5xx; readiness stays 200 but "degraded", naming redis,
    fast; all recovers, cache included, when Redis returns, without a restart."""
    server = redis_backed
    headers = server.token("alice", PASSWORD)
    assert requests.post(server.url("/predict-cached"), json=[1], headers=headers, timeout=10).ok

    redis_server.stop()
    statuses = []
    for n in range(20):
        for path in ("/predict", "/predict-limited", "/predict-cached", "/users/me"):
            if path == "/users/me":
                response = requests.get(server.url(path), headers=headers, timeout=10)
            else:
                response = requests.post(server.url(path), json=[n], headers=headers, timeout=10)
            statuses.append(response.status_code)
    assert set(statuses) == {200}, statuses
    server.assert_degraded("redis", within=1.0)

    redis_server.start()
    server.wait_ready()
    # The cache is used again: a repeated request becomes a hit.
    hits = []
    deadline = time.monotonic() + 10
    while not hits or not hits[-1]:
        assert time.monotonic() < deadline, "cache did not recover"
        body = requests.post(
            server.url("/predict-cached"), json=[42], headers=headers, timeout=10
        ).json()
        hits.append(body["cached"])
        time.sleep(0.3)


def test_limits_stay_enforced_while_redis_is_down(servers, redis_server, postgres_url):
    """With Redis down, limits fall back to per-worker memory: never silently unlimited."""
    env = {"MLAPI_REDIS_URL": redis_server.url, "MLAPI_DATABASE_URL": postgres_url}
    server = servers(env=env, create=False)
    assert server.flask("users", "create", "alice", "--password", PASSWORD).returncode == 0
    server.start()
    headers = server.token("alice", PASSWORD)
    redis_server.stop()
    statuses = [
        requests.post(
            server.url("/predict-limited"), json=[1], headers=headers, timeout=10
        ).status_code
        for _ in range(14)
    ]
    assert statuses.count(200) == 10 and statuses.count(429) == 4, statuses


def test_paused_redis_costs_at_most_a_socket_timeout(redis_backed, redis_server):
    """During CLIENT PAUSE each request is delayed by at most about one socket timeout."""
    server = redis_backed
    headers = server.token("alice", PASSWORD)
    redis_server.command("CLIENT", "PAUSE", "4000", "ALL")
    durations, statuses = [], []
    for n in range(8):
        started = time.monotonic()
        response = requests.post(
            server.url("/predict-cached"), json=[n], headers=headers, timeout=10
        )
        durations.append(time.monotonic() - started)
        statuses.append(response.status_code)
    assert set(statuses) == {200}
    # socket timeout is 0.25 s; a request may pay it for the limiter and once more for the
    # circuit breaker's probe, never once per Redis call.
    assert max(durations) < 0.9, durations


def test_graceful_shutdown_finishes_in_flight_requests(redis_backed):
    """SIGTERM while requests are in flight (bodies half sent): every one is answered 200,
    and the server then exits cleanly."""
    server = redis_backed
    token = server.token("alice", PASSWORD)["Authorization"]
    body = json.dumps([1.0] * 2000).encode()
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    connections = []
    for _ in range(6):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        sock.sendall(head + body[: len(body) // 2])
        connections.append(sock)
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    answers = []
    for sock in connections:
        sock.sendall(body[len(body) // 2 :])
        answers.append(b"".join(iter(lambda s=sock: s.recv(65536), b"")))
        sock.close()
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers
    assert all(b'"prediction":1.0' in answer for answer in answers)
    assert server.process.wait(timeout=30) == 0
