"""Fixtures of the system tests: real gunicorn processes, a private redis-server and a
private PostgreSQL cluster (tests/system/servers.py), which tests may stop, freeze or restart."""

import os

import pytest

from tests.system.servers import Gunicorn, PostgresServer, RedisServer


@pytest.fixture
def servers(tmp_path):
    """Start mlapi under real gunicorn processes; every one is stopped at the end."""
    started = []

    def start(env=None, name=None, create=True):
        server = Gunicorn(tmp_path, env=env, name=name or f"mlapi-{len(started)}")
        started.append(server)
        return server.start() if create else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A private redis-server this test may stop, restart or pause."""
    import shutil

    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this is a failure, not a skip")
        pytest.skip(message)
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_server():
    """A private PostgreSQL cluster this test may stop, restart or freeze (SIGSTOP)."""
    reason = PostgresServer.available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; under CI=true this is a failure, not a skip")
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    server.cleanup()
