"""The prediction budget: one Redis round trip per authenticated request, same semantics."""

import shutil
import threading
import time

import pytest

from mlapi import users
from tests.helpers import assert_problem, client_for
from tests.system.servers import RedisServer

BODY = [1.0, 2.0, 3.0, 4.0]


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test alone, so MONITOR sees only our commands."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


class Monitor:
    """Commands clients send to a Redis server (not those scripts run inside it)."""

    def __init__(self, url):
        import redis

        self.client = redis.Redis.from_url(url)
        self.stopper = redis.Redis.from_url(url)
        self.stopper.ping()  # connected before monitoring starts: its handshake is not counted
        self.commands = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self):
        with self.client.monitor() as monitor:
            self._ready.set()
            for event in monitor.listen():
                if event["command"] == "ECHO monitor-stop":
                    return
                if event.get("client_type") != "lua":
                    self.commands.append(event["command"].split()[0].upper())

    def __enter__(self):
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.1)
        return self

    def __exit__(self, *_exc):
        self.stopper.echo("monitor-stop")
        self._thread.join(5)


@pytest.mark.parametrize("path", ["/v1/predict", "/predict", "/predict-cached"])
def test_one_redis_round_trip_per_authenticated_request(make_app, private_redis, path):
    client, headers = client_for(make_app(REDIS_URL=private_redis.url))
    for _ in range(3):  # load the script, start the generation, cache the user and answer
        assert client.post(path, json=BODY, headers=headers).status_code == 200
    with Monitor(private_redis.url) as monitor:
        for _ in range(10):
            response = client.post(path, json=BODY, headers=headers)
            assert response.status_code == 200
            assert response.headers["X-RateLimit-Remaining"]
    assert monitor.commands == ["EVALSHA"] * 10
    # The activity write rode along in the first request's script.
    keys = private_redis.command("KEYS", "*active_users")
    assert len(keys) == 1 and private_redis.command("ZSCORE", keys[0], "alice") is not None
    if path == "/predict-cached":
        assert response.get_json()["cached"] is True


def test_a_change_costs_a_second_trip_and_spends_nothing_when_refused(make_app, private_redis):
    """A change made by another worker: the script spends nothing and names the new
    generation; the worker reads the user again and spends in a second trip, or refuses."""
    settings = {"REDIS_URL": private_redis.url, "REDIS_KEY_PREFIX": "mlapi-budget-test:"}
    app = make_app(PREDICT_RATE_LIMIT="5/minute", **settings)
    other = make_app(**settings)
    client, headers = client_for(app)
    client_for(app, "bob")
    for _ in range(2):
        assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    with other.app_context():
        users.set_disabled("bob", True)  # another user: alice is re-read, then spends
    with Monitor(private_redis.url) as monitor:
        response = client.post("/v1/predict", json=BODY, headers=headers)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "2"
    assert monitor.commands == ["EVALSHA", "EVALSHA"]
    with other.app_context():
        users.set_disabled("alice", True)
    with Monitor(private_redis.url) as monitor:
        assert_problem(client.post("/v1/predict", json=BODY, headers=headers), 401)
    assert monitor.commands == ["EVALSHA"]
    with other.app_context():
        users.set_disabled("alice", False)
    fresh, fresh_headers = (
        client,
        {
            "Authorization": "Bearer "
            + client.post(
                "/token", data={"username": "alice", "password": "correct-horse-battery"}
            ).get_json()["access_token"]
        },
    )
    # The refused request spent nothing: 3 of 5 used, 2 left, then 429.
    statuses = [fresh.post("/v1/predict", json=BODY, headers=fresh_headers).status_code]
    statuses += [fresh.post("/v1/predict", json=BODY, headers=fresh_headers).status_code]
    assert statuses == [200, 200]
    assert_problem(fresh.post("/v1/predict", json=BODY, headers=fresh_headers), 429)


def test_the_budget_and_its_headers_match_flask_limiter(make_app, private_redis):
    """Headers and 429 as flask-limiter gave them; the window lives under its key layout."""
    app = make_app(REDIS_URL=private_redis.url, PREDICT_RATE_LIMIT="2/minute")
    client, headers = client_for(app)
    first = client.post("/v1/predict", json=BODY, headers=headers)
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert 0 < int(first.headers["X-RateLimit-Reset"]) - time.time() <= 61
    assert first.headers["RateLimit-Policy"] == '"default";q=2;w=60'
    assert first.headers["RateLimit"].startswith('"default";r=1;t=')
    assert "Retry-After" not in first.headers
    client.post("/v1/predict", json=BODY, headers=headers)
    refused = client.post("/v1/predict", json=BODY, headers=headers)
    body = assert_problem(refused, 429)
    assert "2 per 1 minute" in body["detail"]
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    keys = [k.decode() for k in private_redis.command("KEYS", "*predictions*")]
    assert len(keys) == 1 and keys[0].endswith("/user:alice/predictions/2/1/minute")
    assert private_redis.command("LLEN", keys[0]) == 2


def test_redis_down_mid_traffic_counts_in_memory_and_reads_sql(make_app, private_redis):
    app = make_app(REDIS_URL=private_redis.url, PREDICT_RATE_LIMIT="3/minute")
    client, headers = client_for(app)
    for _ in range(2):
        assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    private_redis.stop()
    with app.app_context():
        users.set_disabled("alice", True)  # announced to nobody: Redis is gone
    assert_problem(client.post("/v1/predict", json=BODY, headers=headers), 401)


def test_with_limits_kept_in_memory_the_budget_counts_there_too(make_app, redis_url):
    """RATELIMIT_STORAGE_URI=memory:// beside Redis: the budget counts where the limiter does."""
    app = make_app(
        REDIS_URL=redis_url, RATELIMIT_STORAGE_URI="memory://", PREDICT_RATE_LIMIT="2/minute"
    )
    client, headers = client_for(app)
    statuses = [
        client.post("/v1/predict", json=BODY, headers=headers).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_the_budget_packs_its_command_as_redis_py_does():
    """budget._pack hands hiredis the command without redis-py's argument checks: the
    bytes on the wire must be the ones redis-py's own packer sends."""
    import redis

    from mlapi import budget as budget_module

    connection = redis.Connection()
    command = ("EVALSHA", "0" * 40, 2, "limits:user:alice", "k:gen", "", 1000, 60, "1", "é")
    assert budget_module.pack_command is not None  # hiredis is a pinned dependency
    assert b"".join(budget_module._pack(connection, command)) == b"".join(
        connection.pack_command(*command)
    )


def test_expired_entries_leave_the_window_list(make_app, private_redis):
    """The script drops entries older than the window: the list holds the window alone,
    one by one as they expire and, after a long idle, all at once (more than 64)."""
    app = make_app(REDIS_URL=private_redis.url, PREDICT_RATE_LIMIT="100/2 second")
    client, headers = client_for(app)
    for _ in range(70):
        assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    (key,) = [k.decode() for k in private_redis.command("KEYS", "*predictions*")]
    assert private_redis.command("LLEN", key) == 70
    old = private_redis.command("LRANGE", key, 0, -1)
    time.sleep(2.2)  # all 70 expire: more than 64 at once
    response = client.post("/v1/predict", json=BODY, headers=headers)
    assert response.headers["X-RateLimit-Remaining"] == "99"
    assert private_redis.command("LLEN", key) == 1
    assert private_redis.command("LINDEX", key, 0) not in old
    for _ in range(3):
        client.post("/v1/predict", json=BODY, headers=headers)
    time.sleep(1.2)
    response = client.post("/v1/predict", json=BODY, headers=headers)
    assert response.headers["X-RateLimit-Remaining"] == "95"
    time.sleep(1.0)  # the first four expire, one by one from the tail
    response = client.post("/v1/predict", json=BODY, headers=headers)
    assert response.headers["X-RateLimit-Remaining"] == "98"
    assert private_redis.command("LLEN", key) == 2
