"""Real gunicorn processes (the master and every worker) serve every request that reads
or writes users and revocations without importing SQLAlchemy, Alembic or Flask-Migrate
(about 24 MiB per worker), in both configurations: embedded (SQLite, one worker) and
scale-out (PostgreSQL and Redis, two workers). Only the CLI's `flask db` and the child
process that upgrades a database's schema load them.

Every process started with the watch below on its path (``sitecustomize``) logs the
watched modules it imports, with its pid, to MLAPI_TEST_IMPORT_LOG.
"""

import uuid

import pytest
import requests

from tests.helpers import PASSWORD
from tests.system.servers import wait_until

pytestmark = pytest.mark.slow

WATCH = """
import os
import sys

WATCHED = ("sqlalchemy", "alembic", "flask_migrate", "flask_sqlalchemy")


class Watch:
    def find_spec(self, name, path=None, target=None):
        if any(name == w or name.startswith(w + ".") for w in WATCHED):
            with open(os.environ["MLAPI_TEST_IMPORT_LOG"], "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
        return None


sys.meta_path.insert(0, Watch())
"""


def imports_by_pid(path):
    found = {}
    if path.exists():
        for line in path.read_text().splitlines():
            pid, name = line.split()
            found.setdefault(int(pid), set()).add(name)
    return found


@pytest.fixture(params=["embedded", "scale-out"])
def configuration(request):
    """The environment of one of the two configurations, on a fresh database."""
    if request.param == "embedded":
        return {}
    return {
        "MLAPI_DATABASE_URL": request.getfixturevalue("postgres_url"),
        "MLAPI_REDIS_URL": request.getfixturevalue("redis_url"),
        "MLAPI_REDIS_KEY_PREFIX": f"mlapi-test-{uuid.uuid4().hex[:8]}:",
        "WEB_CONCURRENCY": "2",
    }


def session(server):
    """Log in, predict, read the profile, refresh, check readiness, log out."""
    login = requests.post(
        server.url("/token"), data={"username": "alice", "password": PASSWORD}, timeout=10
    )
    assert login.status_code == 200
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
    answers = [
        requests.post(
            server.url("/v1/predict"), json=[1.0, 2.0, 3.0, 4.0], headers=auth, timeout=10
        ),
        requests.get(server.url("/users/me"), headers=auth, timeout=10),
        requests.post(
            server.url("/token"),
            data={"grant_type": "refresh_token", "refresh_token": login.json()["refresh_token"]},
            timeout=10,
        ),
        requests.post(server.url("/logout"), headers=auth, timeout=10),
        requests.get(server.url("/health/ready"), timeout=10),
    ]
    assert [answer.status_code for answer in answers] == [200] * len(answers)
    assert requests.get(server.url("/users/me"), headers=auth, timeout=10).status_code == 401


def test_gunicorn_serves_users_and_revocations_without_sqlalchemy(servers, tmp_path, configuration):
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "sitecustomize.py").write_text(WATCH)
    log = tmp_path / "imports.log"
    env = {"PYTHONPATH": str(watch), "MLAPI_TEST_IMPORT_LOG": str(log), **configuration}
    server = servers(create=False, env=env)
    # The CLI finds a fresh database and upgrades it in a child process (Alembic): this
    # shows that the watch sees imports, and leaves no migration to the server.
    created = server.flask("users", "create", "alice", "--password", PASSWORD)
    assert created.returncode == 0, created.stderr
    assert {"sqlalchemy", "alembic"} <= set().union(*imports_by_pid(log).values())
    server.start()
    workers = 2 if configuration else 1
    wait_until(lambda: len(server.worker_pids()) == workers, timeout=30, what="the workers")

    # New connections each time: both workers of the scale-out configuration get some.
    for _ in range(4 * workers):
        session(server)

    serving = {server.process.pid, *server.worker_pids()}
    assert len(serving) == 1 + workers, serving
    loaded = {pid: names for pid, names in imports_by_pid(log).items() if pid in serving}
    assert loaded == {}, loaded
