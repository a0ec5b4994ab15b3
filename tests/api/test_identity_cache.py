"""The per-worker cache of token users: no SQL per request, yet every change seen at once."""

import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from mlapi import identity, users
from mlapi.extensions import db
from tests.helpers import PASSWORD, assert_problem, client_for

BODY = [1.0, 2.0, 3.0, 4.0]


class StatementCounter:
    """SQL statements an app's engine sends, counted with a SQLAlchemy cursor event."""

    def __init__(self, app):
        with app.app_context():
            self.engine = db.engine
        self.statements = []
        sa.event.listen(self.engine, "before_cursor_execute", self._record)

    def _record(self, _conn, _cursor, statement, *_args):
        self.statements.append(statement)

    def close(self):
        if sa.event.contains(self.engine, "before_cursor_execute", self._record):
            sa.event.remove(self.engine, "before_cursor_execute", self._record)


@pytest.fixture
def count_sql():
    counters = []

    def attach(app):
        counter = StatementCounter(app)
        counters.append(counter)
        return counter

    yield attach
    for counter in counters:
        counter.close()


def warm(client, headers, app, count_sql):
    """Requests until the worker caches the user; the last is served without SQL."""
    for _ in range(2):
        assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    counter = count_sql(app)
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    assert counter.statements == []
    counter.close()


@pytest.fixture(params=["embedded", "redis"])
def mode(request):
    """Settings of the embedded default (SQLite, no Redis) and of the Redis configuration."""
    if request.param == "redis":
        return {"REDIS_URL": request.getfixturevalue("redis_url")}
    return {}


def test_steady_requests_read_sql_at_most_once_per_second(make_app, mode, count_sql):
    app = make_app(**mode)
    client, headers = client_for(app)
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    counter = count_sql(app)
    started = time.monotonic()
    for _ in range(50):
        assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    seconds = time.monotonic() - started
    assert len(counter.statements) <= seconds / identity.MAX_AGE + 1, counter.statements


def test_a_user_is_read_again_after_max_age(make_app, count_sql):
    app = make_app()
    client, headers = client_for(app)
    client.post("/v1/predict", json=BODY, headers=headers)
    counter = count_sql(app)
    time.sleep(identity.MAX_AGE + 0.1)
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    assert len(counter.statements) == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda: users.set_disabled("alice", True),
        lambda: users.change_password("alice", "another-good-password"),
        lambda: users.delete("alice"),
    ],
    ids=["disable", "password", "delete"],
)
def test_a_change_on_another_instance_is_refused_on_the_next_request(
    make_app, redis_url, change, count_sql
):
    """Two instances sharing Redis and the database: the second refuses at once."""
    prefix = f"mlapi-test-identity-{time.monotonic_ns()}:"
    serving = make_app(REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix)
    admin = make_app(REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix)
    client, headers = client_for(serving)
    warm(client, headers, serving, count_sql)
    with admin.app_context():
        change()
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 401


def test_a_logout_on_another_instance_is_refused_on_the_next_request(
    make_app, redis_url, count_sql
):
    prefix = f"mlapi-test-identity-{time.monotonic_ns()}:"
    serving = make_app(REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix)
    other = make_app(REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix)
    client, headers = client_for(serving)
    warm(client, headers, serving, count_sql)
    assert other.test_client().post("/logout", headers=headers).status_code == 200
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 401


def test_a_logout_is_refused_on_the_next_request_in_the_same_process(client, app, auth, count_sql):
    warm(client, auth, app, count_sql)
    assert client.post("/logout", headers=auth).status_code == 200
    assert client.post("/v1/predict", json=BODY, headers=auth).status_code == 401


def test_a_cli_change_from_another_process_is_refused_on_the_next_request(
    make_app, tmp_path, count_sql
):
    """Embedded mode: SQLite, no Redis; ``flask users disable`` runs in its own process."""
    database = tmp_path / "embedded.db"
    app = make_app(DATABASE_URL=f"sqlite:///{database}")
    client, headers = client_for(app)
    warm(client, headers, app, count_sql)
    script = (
        "from config import TestingConfig; from mlapi import create_app, users\n"
        "settings = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}\n"
        f"settings['DATABASE_URL'] = 'sqlite:///{database}'\n"
        f"app = create_app(settings, instance_path={str(tmp_path / 'cli')!r})\n"
        "with app.app_context(): users.set_disabled('alice', True)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 401


def test_a_re_enabled_user_needs_a_new_login(client, app, auth, count_sql):
    """Disabling ends the sessions; the cache cannot bring them back after enabling."""
    warm(client, auth, app, count_sql)
    with app.app_context():
        users.set_disabled("alice", True)
        users.set_disabled("alice", False)
    assert client.post("/v1/predict", json=BODY, headers=auth).status_code == 401
    fresh = client.post("/token", data={"username": "alice", "password": PASSWORD})
    token = {"Authorization": f"Bearer {fresh.get_json()['access_token']}"}
    assert client.post("/v1/predict", json=BODY, headers=token).status_code == 200


def test_without_a_generation_every_request_reads_sql(make_app, count_sql):
    """Redis unreachable: the generation is unknown, so the user is read as before."""
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    client, headers = client_for(app)
    counter = count_sql(app)
    for _ in range(3):
        assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    assert len(counter.statements) == 3


def test_a_generation_lost_in_redis_is_started_again(make_app, redis_url, count_sql):
    """Redis restarted or evicted the generation: one request reads SQL and starts a new
    one in its round trip; the next requests are served from the cache again."""
    import redis

    app = make_app(REDIS_URL=redis_url)
    client, headers = client_for(app)
    warm(client, headers, app, count_sql)
    key = app.config["REDIS_KEY_PREFIX"] + "identity-generation"
    server = redis.Redis.from_url(redis_url)
    assert server.delete(key) == 1
    counter = count_sql(app)
    for _ in range(5):
        assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    assert server.get(key) is not None
    assert len(counter.statements) == 1, counter.statements


def test_a_refusal_is_never_served_from_the_cache():
    """An entry that would refuse is read again; an accepting one is served while fresh."""
    answers = [("stale", True), ("fresh", False)]
    loads = []

    def load(username, sid):
        loads.append((username, sid))
        return answers[len(loads) - 1]

    class Fixed:
        def current(self):
            return "g1"

    cache = identity.Principals(Fixed(), load=load)
    accepted = lambda principal, revoked: not revoked  # noqa: E731
    assert cache.lookup("alice", "s1", accepted) == (("stale", True), None)
    assert cache.lookup("alice", "s1", accepted) == (("fresh", False), None)
    assert cache.lookup("alice", "s1", accepted) == (("fresh", False), None)
    assert len(loads) == 2


def _aged_entry():
    """A cache of one generation ("g1") whose entry for alice has just passed MAX_AGE:
    (cache, clock [now], the times it read SQL, an accept-all check)."""
    now = [0.0]
    loads = []

    class Fixed:
        def current(self):
            return "g1"

    def load(username, sid):
        loads.append(now[0])
        return ("principal", False)

    cache = identity.Principals(Fixed(), load=load, clock=lambda: now[0])
    accepted = lambda principal, revoked: True  # noqa: E731
    cache.lookup("alice", "s1", accepted)
    now[0] = identity.MAX_AGE + 0.1
    return cache, now, loads, accepted


def test_an_aged_entry_is_read_again_by_one_thread_at_a_time():
    """Past MAX_AGE one thread re-reads; others serve the entry meanwhile, up to 2x."""
    cache, now, loads, accepted = _aged_entry()
    with cache._refreshing:  # another thread of the worker is reading it again
        cache.lookup("alice", "s1", accepted)
        assert loads == [0.0]
        now[0] = 2 * identity.MAX_AGE + 0.1
        cache.lookup("alice", "s1", accepted)
        assert loads == [0.0, now[0]]
    now[0] = 4 * identity.MAX_AGE
    cache.lookup("alice", "s1", accepted)
    assert len(loads) == 3


def test_a_thread_that_finds_the_entry_read_again_meanwhile_does_not_read_it_too():
    """Two threads see an aged entry; the first reads it again; the second, taking the lock
    only after that, serves the new entry instead of a second read."""
    cache, now, loads, accepted = _aged_entry()
    lock = cache._refreshing

    class FirstThreadFinishesFirst:
        """The lock as the second thread meets it: the first thread's read just ended."""

        def acquire(self, blocking=True):
            cache.reload("alice", "s1", "g1")
            return lock.acquire(blocking)

        def release(self):
            lock.release()

    cache._refreshing = FirstThreadFinishesFirst()
    assert cache.lookup("alice", "s1", accepted) == (("principal", False), None)
    assert loads == [0.0, now[0]]  # the first thread's read only


def test_a_role_change_on_another_instance_applies_on_the_next_request(make_app, redis_url):
    """A role change (which ends the user's sessions) is seen by the other instance at once."""
    prefix = f"mlapi-test-identity-{time.monotonic_ns()}:"
    serving = make_app(REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix)
    admin = make_app(REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix)
    with serving.app_context():
        users.create("root", PASSWORD, role="admin")
    client = serving.test_client()
    token = client.post("/token", data={"username": "root", "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    for _ in range(3):
        assert client.delete("/cache/invalidate", json=BODY, headers=headers).status_code == 200
    with admin.app_context():
        users.set_role("root", "user")
    assert_problem(client.delete("/cache/invalidate", json=BODY, headers=headers), 401)
