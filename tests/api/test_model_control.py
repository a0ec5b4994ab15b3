"""Load, unload and index reach every host sharing a Redis: the control state lives in
one Redis key, which each worker's poller reads with one GET per poll."""

import uuid

import pytest

from mlapi.predictions import reloader
from mlapi.serving.reload import FileControl, RedisControl
from tests.helpers import client_for, write_version

pytestmark = pytest.mark.redis


class CountingClient:
    """A real redis-py client that records the commands sent through it."""

    def __init__(self, client):
        self.client = client
        self.calls = []

    def get(self, key):
        self.calls.append(("GET", key))
        return self.client.get(key)

    def transaction(self, *args, **kwargs):
        self.calls.append(("TRANSACTION", args[1:]))
        return self.client.transaction(*args, **kwargs)


@pytest.fixture
def hosts(make_app, redis_url, tmp_path):
    """Two apps as on two hosts: own repositories (forest/1 each), one Redis and prefix."""
    prefix = f"mlapi-test-{uuid.uuid4().hex[:8]}:"
    apps = []
    for host in ("a", "b"):
        root = tmp_path / f"repository-{host}"
        write_version(root, "forest", 1)
        apps.append(make_app(MODEL_DIR=str(root), REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix))
    return apps


def ready(app):
    return app.test_client().get("/v2/models/forest/ready").status_code


def poll(app):
    with app.app_context():
        reloader().poll()


def admin_client(app):
    with app.app_context():
        from mlapi import users

        users.create("root", "correct-horse-battery-9", role="admin")
    client = app.test_client()
    token = client.post("/token", data={"username": "root", "password": "correct-horse-battery-9"})
    return client, {"Authorization": f"Bearer {token.get_json()['access_token']}"}


def test_the_control_state_is_in_redis_when_configured_else_in_a_file(hosts, make_app):
    with hosts[0].app_context():
        control = reloader().control
        assert isinstance(control, RedisControl)
        assert control.key == hosts[0].config["REDIS_KEY_PREFIX"] + "models:control"
    embedded = make_app()
    with embedded.app_context():
        assert isinstance(reloader().control, FileControl)


def test_unload_and_load_on_one_host_reach_the_other_at_its_next_poll(hosts):
    a, b = hosts
    client, headers = admin_client(a)
    assert (ready(a), ready(b)) == (200, 200)

    response = client.post("/v2/repository/models/forest/unload", headers=headers)
    assert response.status_code == 200, response.get_json()
    assert ready(a) == 503
    assert ready(b) == 200  # b has not polled yet
    poll(b)
    assert ready(b) == 503
    assert "unloaded" in b.test_client().get("/v2/models/forest/ready").get_json()["error"]

    response = client.post("/v2/repository/models/forest/load", headers=headers)
    assert response.status_code == 200
    poll(b)
    assert (ready(a), ready(b)) == (200, 200)


def test_index_on_one_host_makes_the_other_rescan(hosts):
    a, b = hosts
    client, headers = admin_client(a)
    # index bumps the shared generation: b rebuilds its snapshot at its next poll even
    # though its own repository did not change.
    generation_before = b.extensions["mlapi.models"].snapshot.fingerprint[1]
    response = client.post("/v2/repository/index", headers=headers)
    assert response.status_code == 200
    poll(b)
    generation_after = b.extensions["mlapi.models"].snapshot.fingerprint[1]
    assert generation_after != generation_before
    assert generation_after == a.extensions["mlapi.models"].snapshot.fingerprint[1]


def test_a_poll_costs_one_get_and_a_request_none(hosts):
    a, _ = hosts
    with a.app_context():
        control = reloader().control
        counting = CountingClient(control.client)
        control.client = counting
        for _ in range(5):
            reloader().poll()
    assert counting.calls == [("GET", control.key)] * 5

    counting.calls.clear()
    client, headers = client_for(a)
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0, 1, 2, 3]}]}
    assert client.post("/v2/models/forest/infer", json=body, headers=headers).status_code == 200
    assert client.get("/v2/models/forest/ready").status_code == 200
    assert counting.calls == []


def test_with_redis_down_the_app_starts_serving_and_changes_are_a_503(make_app, tmp_path, caplog):
    root = tmp_path / "repository"
    write_version(root, "forest", 1)
    # Nothing listens on port 1: every Redis call fails at once.
    app = make_app(MODEL_DIR=str(root), REDIS_URL="redis://127.0.0.1:1/0")
    assert ready(app) == 200
    client, headers = admin_client(app)
    response = client.post("/v2/repository/models/forest/unload", headers=headers)
    assert response.status_code == 503, response.get_data(as_text=True)
    assert "Redis is unavailable" in response.get_json()["error"]
    assert int(response.headers["Retry-After"]) >= 1
    assert ready(app) == 200  # nothing changed on this host either
    caplog.clear()
    with app.app_context():
        for _ in range(3):
            reloader().poll()
    assert ready(app) == 200
    warnings = [r for r in caplog.records if "control state unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not once per poll
    assert not [r for r in caplog.records if r.exc_info]


def test_the_cli_says_so_when_redis_is_down(make_app, tmp_path):
    root = tmp_path / "repository"
    write_version(root, "forest", 1)
    app = make_app(MODEL_DIR=str(root), REDIS_URL="redis://127.0.0.1:1/0")
    for command in ("unload", "load"):
        result = app.test_cli_runner().invoke(args=["models", command, "forest"])
        assert result.exit_code == 1
        assert "Not changed: Redis is unavailable" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_cli_changes_reach_a_running_host(hosts):
    a, b = hosts
    result = a.test_cli_runner().invoke(args=["models", "unload", "forest"])
    assert result.exit_code == 0, result.output
    poll(b)
    assert ready(b) == 503
