"""Dependency failures under traffic: private Redis and PostgreSQL servers stopped, frozen with
SIGSTOP, flapping and restarted while a real gunicorn (two workers) answers a client loop.

Every answer must be a 2xx, a 429, or a 503 with Retry-After, none slower than about five
seconds, and Redis-backed limits and cache must be back within a few seconds of Redis.
"""

import concurrent.futures
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

from tests.helpers import metric
from tests.system.servers import wait_until

pytestmark = [pytest.mark.slow]

PASSWORD = "resilient-pass-1"
# Slowest acceptable answer while a dependency is down or frozen (the client-side deadlines
# are 2 s for a statement and 2 s for a new connection; Redis calls 0.25 s).
SLOWEST = 5.5
USERS = ("alice", "bob", "carol", "dave", "erin")


class Traffic:
    """A bounded client loop: ``clients`` threads cycling through a mix of requests until
    stopped, each answer recorded as (path, status, Retry-After, seconds)."""

    def __init__(self, server, headers, clients=4):
        self.server = server
        self.headers = headers
        self.clients = clients
        self.records = []
        self.failures = []
        self._stop = threading.Event()
        self._threads = []
        self._lock = threading.Lock()

    def _requests(self, n):
        features = [n % 7, 1.0]
        return [
            ("POST", "/predict", {"json": features, "headers": self.headers}),
            ("POST", "/predict-cached", {"json": features, "headers": self.headers}),
            ("GET", "/users/me", {"headers": self.headers}),
            ("POST", "/token", {"data": {"username": "alice", "password": PASSWORD}}),
            ("GET", "/public", {}),
            ("GET", "/health/ready", {}),
            ("GET", "/metrics", {}),
        ]

    def _run(self, offset):
        n = offset
        while not self._stop.is_set():
            for method, path, kwargs in self._requests(n):
                if self._stop.is_set():
                    return
                started = time.monotonic()
                try:
                    response = requests.request(method, self.server.url(path), timeout=15, **kwargs)
                except requests.RequestException as exc:
                    with self._lock:
                        self.failures.append((path, repr(exc), time.monotonic() - started))
                    continue
                record = (
                    path,
                    response.status_code,
                    response.headers.get("Retry-After"),
                    time.monotonic() - started,
                )
                with self._lock:
                    self.records.append(record)
            n += 1

    def __enter__(self):
        for offset in range(self.clients):
            thread = threading.Thread(target=self._run, args=(offset,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def assert_honest(self):
        """Only 2xx, 429, or 503 with Retry-After; none slower than SLOWEST; no failures."""
        assert not self.failures, self.failures[:5]
        assert len(self.records) > 50, f"too little traffic: {len(self.records)} answers"
        bad = [r for r in self.records if not (200 <= r[1] < 300 or r[1] in (429, 503))]
        assert not bad, bad[:10]
        no_retry = [r for r in self.records if r[1] == 503 and not r[2]]
        assert not no_retry, no_retry[:10]
        slow = [r for r in self.records if r[3] > SLOWEST]
        assert not slow, slow[:10]

    def statuses(self):
        return {record[1] for record in self.records}


def create_users(server):
    for name in USERS:
        result = server.flask("users", "create", name, "--password", PASSWORD)
        assert result.returncode == 0, result.stderr


def public_limit(server, address, attempts=12):
    """(passed, refused) of ``attempts`` concurrent requests to /public (5 per minute per
    client address) from ``address``; exactly 5 pass only if both workers count together."""

    def call(_):
        return requests.get(
            server.url("/public"), headers={"X-Forwarded-For": address}, timeout=10
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(attempts) as pool:
        statuses = list(pool.map(call, range(attempts)))
    return statuses.count(200), statuses.count(429)


def wait_redis_backed_limits(server, redis_server, within):
    """Probe /public from fresh addresses until a probe is exact and counted in Redis;
    returns the seconds it took."""
    started = time.monotonic()
    while True:
        address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
        exact = public_limit(server, address) == (5, 7)
        if exact and any(address.encode() in key for key in redis_server.scan_keys()):
            return time.monotonic() - started
        assert time.monotonic() - started < within, "limits did not return to Redis"
        time.sleep(0.2)


def wait_cache_hit(server, headers, within):
    features = [uuid.uuid4().int % 1000, 2.0]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        body = requests.post(
            server.url("/predict-cached"), json=features, headers=headers, timeout=10
        ).json()
        if body.get("cached"):
            return
        time.sleep(0.2)
    raise AssertionError(f"the cache did not serve a hit within {within}s")


def readiness(server):
    response = requests.get(server.url("/health/ready"), timeout=10)
    return response.status_code, response.json()


@pytest.fixture
def redis_stack(servers, redis_server):
    """gunicorn with two workers on a private Redis; users on SQLite."""
    env = {
        "MLAPI_REDIS_URL": redis_server.url,
        "WEB_CONCURRENCY": "2",
        "MLAPI_TRUSTED_PROXIES": "1",
    }
    server = servers(env=env, create=False)
    create_users(server)
    return server.start()


def test_redis_stopped_frozen_and_flapping_under_traffic(redis_stack, redis_server):
    """Redis stopped, restarted, frozen with SIGSTOP and flapping while four clients send
    traffic: only 2xx, 429 or 503 with Retry-After, each within about five seconds; the pod
    stays ready (degraded) throughout; limits, cache and readiness are Redis-backed again
    within a few seconds of Redis's return."""
    server = redis_stack
    headers = server.token("alice", PASSWORD)
    with Traffic(server, headers) as traffic:
        time.sleep(1)
        redis_server.stop()
        time.sleep(3)
        status, body = readiness(server)
        assert status == 200 and body["status"] == "degraded", body
        assert body["checks"]["redis"]["status"] == "fail"
        # The metrics say so too, checked by the scrape itself.
        scraped = requests.get(server.url("/metrics"), timeout=10).text
        assert metric(scraped, "readiness_status", status="degraded") == 1
        assert 'readiness_check_ok{check="redis"} 0.0' in scraped
        redis_server.start()
        time.sleep(2)
        redis_server.freeze()
        time.sleep(4)
        redis_server.thaw()
        for _ in range(3):
            time.sleep(1)
            redis_server.stop()
            time.sleep(1)
            redis_server.start()
        time.sleep(1)
    traffic.assert_honest()
    assert 200 in traffic.statuses()

    # Back within a few seconds: both workers count one limit in Redis again.
    wait_until(lambda: readiness(server)[1]["status"] == "ready", timeout=5, what="ready")
    wait_redis_backed_limits(server, redis_server, within=5)
    wait_cache_hit(server, headers, within=5)
    assert any(key.startswith(b"mlapi:limits:") for key in redis_server.scan_keys())


def test_limits_return_to_redis_within_seconds(redis_stack, redis_server):
    """After an outage long enough for flask-limiter's own back-off (up to 32 s) to grow,
    the limiter still uses Redis again a few seconds after it is back."""
    server = redis_stack
    redis_server.stop()
    for n in range(16):  # each worker falls back to memory and fails several re-checks
        requests.get(server.url("/public"), headers={"X-Forwarded-For": f"10.9.9.{n}"})
        time.sleep(0.5)
    assert public_limit(server, "10.9.8.1")[0] >= 5  # limited in memory meanwhile
    redis_server.start()
    assert wait_redis_backed_limits(server, redis_server, within=6) < 6
    assert public_limit(server, "10.9.8.2") == (5, 7)  # and it stays so


@pytest.fixture
def postgres_stack(servers, redis_server, postgres_server):
    """gunicorn with two workers on a private PostgreSQL and a private Redis."""
    env = {
        "MLAPI_REDIS_URL": redis_server.url,
        "MLAPI_DATABASE_URL": postgres_server.url,
        "WEB_CONCURRENCY": "2",
    }
    server = servers(env=env, create=False)
    create_users(server)
    return server.start()


def test_postgres_stopped_frozen_and_restarted_under_traffic(postgres_stack, postgres_server):
    """PostgreSQL frozen with SIGSTOP (pooled connections stay open, nothing answers), thawed,
    stopped and restarted under traffic: only 2xx, 429 or 503 with Retry-After, each within
    about five seconds; readiness names the database meanwhile; all recovers."""
    server = postgres_stack
    headers = server.token("alice", PASSWORD)
    with Traffic(server, headers) as traffic:
        time.sleep(1)
        postgres_server.freeze()
        time.sleep(2)
        status, body = readiness(server)
        assert status == 503 and body["checks"]["database"]["status"] == "fail", body
        time.sleep(6)
        postgres_server.thaw()
        time.sleep(2)
        postgres_server.stop()
        time.sleep(3)
        postgres_server.start()
        time.sleep(2)
    traffic.assert_honest()
    assert 503 in traffic.statuses() and 200 in traffic.statuses()
    wait_until(lambda: readiness(server)[0] == 200, timeout=5, what="ready")
    for _ in range(6):  # every worker and pooled connection works again
        response = requests.get(server.url("/users/me"), headers=headers, timeout=10)
        assert response.status_code == 200


def test_cli_answers_a_stopped_postgres_in_one_sentence(servers, postgres_server):
    """``flask users ...`` against a stopped PostgreSQL: one sentence and exit status 1."""
    server = servers(env={"MLAPI_DATABASE_URL": postgres_server.url}, create=False)
    assert server.flask("users", "create", "alice", "--password", PASSWORD).returncode == 0
    postgres_server.stop()
    for args in (("users", "list"), ("users", "create", "bob", "--password", PASSWORD)):
        result = server.flask(*args)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert "database" in result.stderr.lower()


@pytest.fixture
def locked_sqlite(tmp_path):
    """Hold an exclusive lock on an SQLite file from another process until released."""
    holders = []

    def lock(path):
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys\n"
                "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "conn.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.read()\n",
                str(path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout.readline().strip() == "locked"
        holders.append(holder)
        return holder

    yield lock
    for holder in holders:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_locked_sqlite_is_unready_503_and_one_cli_sentence(servers, locked_sqlite):
    """Another process holds BEGIN EXCLUSIVE on the SQLite file: readiness 503 naming the
    database, the API 503 with Retry-After, the CLI one sentence and exit 1; all recover
    when the lock is released."""
    server = servers(create=False)
    create_users(server)
    server.start()
    headers = server.token("alice", PASSWORD)
    path = server.workdir.parent / "instance" / "mlapi.db"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == len(USERS)

    holder = locked_sqlite(path)
    status, body = readiness(server)
    assert status == 503, body
    assert body["checks"]["database"]["status"] == "fail"
    started = time.monotonic()
    response = requests.get(server.url("/users/me"), headers=headers, timeout=10)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert time.monotonic() - started < SLOWEST
    result = server.flask("users", "list")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "locked" in result.stderr

    holder.stdin.close()
    holder.wait(timeout=10)
    wait_until(lambda: readiness(server)[0] == 200, timeout=5, what="ready")
    assert requests.get(server.url("/users/me"), headers=headers, timeout=10).status_code == 200
    assert server.flask("users", "list").returncode == 0


def test_two_deployments_share_one_redis(servers, redis_server):
    """Two services with their own MLAPI_REDIS_KEY_PREFIX on one Redis: every key either
    writes starts with its prefix, and one service's limits and cache do not touch the other's."""
    deployments = []
    for prefix in ("alpha:", "beta:"):
        env = {
            "MLAPI_REDIS_URL": redis_server.url,
            "MLAPI_REDIS_KEY_PREFIX": prefix,
            "WEB_CONCURRENCY": "2",
            "MLAPI_TRUSTED_PROXIES": "1",
        }
        server = servers(env=env, name=prefix.rstrip(":"), create=False)
        server.env["MLAPI_INSTANCE_PATH"] = str(server.workdir / "instance")
        create_users(server)
        deployments.append(server.start())
    alpha, beta = deployments

    assert public_limit(alpha, "10.1.1.1") == (5, 7)
    assert public_limit(beta, "10.1.1.1") == (5, 7)  # alpha's spent budget is not beta's
    headers_alpha = alpha.token("alice", PASSWORD)
    headers_beta = beta.token("alice", PASSWORD)
    first = requests.post(alpha.url("/predict-cached"), json=[5, 6], headers=headers_alpha)
    assert first.json()["cached"] is False
    # The same features on beta: a miss, its cache is its own.
    assert (
        requests.post(beta.url("/predict-cached"), json=[5, 6], headers=headers_beta).json()[
            "cached"
        ]
        is False
    )
    for server in deployments:  # active users, scraped through /metrics
        assert requests.get(server.url("/metrics"), timeout=10).status_code == 200

    keys = redis_server.scan_keys()
    assert keys
    strays = [key for key in keys if not key.startswith((b"alpha:", b"beta:"))]
    assert not strays, strays
    for prefix in (b"alpha:", b"beta:"):
        mine = [key for key in keys if key.startswith(prefix)]
        assert any(key.startswith(prefix + b"limits:") for key in mine), mine
        assert any(key.startswith(prefix + b"cache:") for key in mine), mine
        assert prefix + b"active_users" in mine, mine
