"""The per-worker cache of token users: no SQL per request, yet every change seen at once."""

import subprocess
import sys
import threading
import time

import pytest

from mlapi import identity, users
from mlapi.extensions import db
from tests.helpers import PASSWORD, assert_problem, client_for

BODY = [1.0, 2.0, 3.0, 4.0]


class StatementCounter:
    """SQL statements an app's database runs, counted with mlapi.sql's statement hook."""

    def __init__(self, app):
        with app.app_context():
            self.database = db._get_current_object()
        self.statements = []
        self.database.listen(self._record)

    def _record(self, statement, _parameters):
        self.statements.append(statement)

    def close(self):
        self.database.unlisten(self._record)


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


class SlowSource:
    """A principal source whose reads wait until the test lets them finish, as a slow
    database would; ``loads`` records when each read began on the cache's clock."""

    def __init__(self, generation="g1"):
        self.now = [0.0]
        self.loads = []
        self.release = threading.Event()
        self.release.set()
        self.generation = generation
        self.failures = 0  # how many of the next reads fail, as a dropped connection does

    def current(self):
        return self.generation

    def load(self, username, sid):
        self.loads.append(self.now[0])
        if not self.release.wait(10):
            raise TimeoutError("the test never let the read finish")
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database went away")
        return ("principal", False)

    def cache(self, wait=10.0):
        return identity.Principals(self, load=self.load, clock=lambda: self.now[0], wait=wait)


def accept_all(principal, revoked):
    return True


def lookups(cache, count, deferred=False):
    """Start ``count`` threads that look alice up at once; (threads, their answers)."""
    answers = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(cache.lookup("alice", "s1", accept_all, deferred))
        )
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads, answers


def wait_for(condition):
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the threads never got there"
        time.sleep(0.005)


def test_threads_asking_at_once_for_an_uncached_user_share_one_read():
    """Four threads of a worker meeting a new user at once send one SELECT, not four."""
    source = SlowSource()
    cache = source.cache()
    source.release.clear()
    threads, answers = lookups(cache, 4)
    wait_for(lambda: len(source.loads) == 1 and len(cache._flights) == 1)
    time.sleep(0.05)  # the other three are waiting for that read, not reading
    assert len(source.loads) == 1
    source.release.set()
    for thread in threads:
        thread.join()
    assert answers == [(("principal", False), None)] * 4
    assert len(source.loads) == 1


def test_an_aged_entry_is_read_again_by_one_thread_while_others_serve_it():
    """Past MAX_AGE one thread re-reads; others serve the entry meanwhile, up to twice
    MAX_AGE, and past that wait for the read under way instead of starting their own."""
    source = SlowSource()
    cache = source.cache()
    cache.lookup("alice", "s1", accept_all)
    source.now[0] = identity.MAX_AGE + 0.1
    source.release.clear()
    reader, _ = lookups(cache, 1)
    wait_for(lambda: len(source.loads) == 2)
    assert cache.lookup("alice", "s1", accept_all) == (("principal", False), None)
    source.now[0] = 2 * identity.MAX_AGE + 0.1
    waiters, answers = lookups(cache, 3)
    time.sleep(0.05)
    assert answers == [] and len(source.loads) == 2
    source.release.set()
    for thread in reader + waiters:
        thread.join()
    assert answers == [(("principal", False), None)] * 3
    assert len(source.loads) == 2


def test_a_thread_that_finds_the_entry_read_again_meanwhile_does_not_read_it_too():
    """A thread that saw an aged entry but leads only after another thread's read ended
    serves that new entry instead of a second read."""
    source = SlowSource()
    cache = source.cache()
    cache.lookup("alice", "s1", accept_all)
    source.now[0] = identity.MAX_AGE + 0.1
    aged = cache._entries["alice", "s1"]
    cache.reload("alice", "s1", "g1")  # the other thread's read, just ended
    assert len(source.loads) == 2
    assert cache._read(("alice", "s1"), "g1", accept_all, None) == (("principal", False), None)
    assert len(source.loads) == 2
    assert cache._entries["alice", "s1"] is not aged


def test_a_deferred_waiter_still_has_the_generation_checked():
    """A shared read may have begun before the waiting request arrived, so a caller that
    defers the generation check gets the generation back to check."""
    source = SlowSource()
    cache = source.cache()
    cache.can_defer = True  # as with a Redis generation, which the budget's script checks
    cache.known = "g1"
    source.release.clear()
    leader, _ = lookups(cache, 1, deferred=True)
    wait_for(lambda: len(source.loads) == 1)
    waiter, answers = lookups(cache, 1, deferred=True)
    time.sleep(0.05)
    source.release.set()
    for thread in leader + waiter:
        thread.join()
    assert answers == [(("principal", False), "g1")]


def test_a_new_generation_is_not_served_by_a_read_of_the_old_one():
    """A read under way when a change was announced cannot answer for the new generation."""
    source = SlowSource()
    cache = source.cache()
    source.release.clear()
    old, _ = lookups(cache, 1)
    wait_for(lambda: len(source.loads) == 1)
    source.generation = "g2"
    new, answers = lookups(cache, 1)
    wait_for(lambda: len(source.loads) == 2)
    source.release.set()
    for thread in old + new:
        thread.join()
    assert answers == [(("principal", False), None)]


def test_a_waiter_reads_itself_when_the_shared_read_fails():
    """A read that fails fails its own request only; the waiters try SQL themselves."""
    source = SlowSource()
    cache = source.cache()
    source.release.clear()
    source.failures = 1
    failures = []

    def leading():
        try:
            cache.lookup("alice", "s1", accept_all)
        except ConnectionError as exc:
            failures.append(exc)

    leader = [threading.Thread(target=leading)]
    leader[0].start()
    wait_for(lambda: len(source.loads) == 1)
    waiter, answers = lookups(cache, 1)
    time.sleep(0.05)
    source.release.set()
    for thread in leader + waiter:
        thread.join()
    assert len(failures) == 1
    assert answers == [(("principal", False), None)]
    assert len(source.loads) == 2


def test_a_waiter_reads_itself_when_the_shared_read_overruns():
    """A read stuck past the database's deadline (a frozen database) holds its waiters no
    longer than that deadline; then they try SQL themselves."""
    source = SlowSource()
    cache = source.cache(wait=0.2)
    source.release.clear()
    leader, _ = lookups(cache, 1)
    wait_for(lambda: len(source.loads) == 1)
    waiter, answers = lookups(cache, 1)
    wait_for(lambda: len(source.loads) == 2)  # waited 0.2 s, then read itself
    source.release.set()
    for thread in leader + waiter:
        thread.join()
    assert answers == [(("principal", False), None)]


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
