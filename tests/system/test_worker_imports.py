"""A real gunicorn worker serves every request that reads or writes users and revocations
without importing SQLAlchemy's ORM (about 6 MiB per worker); only the CLI may load it.

Every process started with the watch below on its path (``sitecustomize``) logs the ORM
modules it imports, with its pid, to MLAPI_TEST_IMPORT_LOG.
"""

import pytest
import requests

from tests.helpers import PASSWORD

pytestmark = pytest.mark.slow

WATCH = """
import os
import sys

WATCHED = ("sqlalchemy.orm", "sqlalchemy.ext", "flask_sqlalchemy")


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


def test_gunicorn_workers_serve_users_and_revocations_without_the_orm(servers, tmp_path):
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "sitecustomize.py").write_text(WATCH)
    log = tmp_path / "imports.log"
    env = {"PYTHONPATH": str(watch), "MLAPI_TEST_IMPORT_LOG": str(log)}
    server = servers(create=False, env=env)
    # The CLI migrates the fresh database first (Alembic loads sqlalchemy.ext): this shows
    # that the watch sees imports, and leaves no migration to the workers.
    created = server.flask("users", "create", "alice", "--password", PASSWORD)
    assert created.returncode == 0, created.stderr
    assert "sqlalchemy.ext" in set().union(*imports_by_pid(log).values())
    server.start()

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

    serving = {server.process.pid, *server.worker_pids()}
    assert len(serving) >= 2, serving
    loaded = {pid: names for pid, names in imports_by_pid(log).items() if pid in serving}
    assert loaded == {}, loaded
