"""Shared fixtures: an app per test on a fresh database, clients, users and tokens.

Tests that need Redis or PostgreSQL use the ``redis_url`` / ``postgres_url``
fixtures: they skip with a reason when the server is unreachable, except under
``CI=true``, where a missing service fails the test.
"""

import os
import socket
import uuid
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from config import TestingConfig
from mlapi import create_app
from mlapi.extensions import db

REDIS_URL = os.environ.get("MLAPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "MLAPI_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PASSWORD = "correct-horse-battery"
# A model file's content, as tests write it into MLAPI_MODEL_DIR.
LINEAR = {
    "name": "price",
    "version": "1",
    "kind": "linear",
    "weights": [2.0, -0.5, 0.25],
    "bias": 1.5,
    "feature_names": ["rooms", "age", "area"],
}


def reachable(url):
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name, url):
    if reachable(url):
        return url
    message = f"{name} is not reachable at {url}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; under CI=true this is a failure, not a skip")
    pytest.skip(message)


@pytest.fixture
def redis_url():
    return require_service("Redis", REDIS_URL)


@pytest.fixture
def postgres_url():
    url = require_service("PostgreSQL", POSTGRES_URL)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS users, revoked_tokens, alembic_version CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def backend(request):
    """The database under test: SQLite, unless a module parametrizes this indirectly.

    ``pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)``
    runs a whole module on both.
    """
    return getattr(request, "param", "sqlite")


@pytest.fixture
def make_app(tmp_path, backend, request):
    """Build apps on a fresh database with test settings; keyword arguments override config."""
    apps = []
    if backend == "postgres":
        database_url = request.getfixturevalue("postgres_url")
    else:
        database_url = f"sqlite:///{tmp_path / 'mlapi.db'}"

    def factory(**overrides):
        settings = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
        settings.update(
            DATABASE_URL=database_url,
            REDIS_KEY_PREFIX=f"mlapi-test-{uuid.uuid4().hex[:8]}:",
        )
        settings.update(overrides)
        app = create_app(settings, instance_path=tmp_path / "instance")
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def app_without_database(make_app, tmp_path):
    """An app whose SQLite database disappeared after start (its folder is gone)."""
    import shutil

    folder = tmp_path / "vanishing"
    folder.mkdir()
    app = make_app(DATABASE_URL=f"sqlite:///{folder / 'mlapi.db'}")
    shutil.rmtree(folder)
    with app.app_context():
        db.engine.dispose()
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_user(app):
    """Create a user directly in the database; returns the username."""
    from mlapi import users

    def factory(username="alice", password=PASSWORD, role="user", email=None):
        with app.app_context():
            users.create(username, password, email=email, role=role)
        return username

    return factory


@pytest.fixture
def login(client):
    """Log in through /token as a tutorial client would; returns bearer headers."""

    def do(username="alice", password=PASSWORD):
        response = client.post("/token", data={"username": username, "password": password})
        assert response.status_code == 200, response.get_json()
        return {"Authorization": f"Bearer {response.get_json()['access_token']}"}

    return do


@pytest.fixture
def auth(make_user, login):
    """Bearer headers for a regular user called alice."""
    make_user("alice", email="alice@example.com")
    return login("alice")


@pytest.fixture
def admin_auth(make_user, login):
    """Bearer headers for an admin called root."""
    make_user("root", role="admin")
    return login("root")


def client_for(app, username="alice", password=PASSWORD):
    """A test client of ``app`` and bearer headers for a new user of it."""
    from mlapi import users

    with app.app_context():
        users.create(username, password)
    client = app.test_client()
    token = client.post("/token", data={"username": username, "password": password})
    return client, {"Authorization": f"Bearer {token.get_json()['access_token']}"}


def assert_problem(response, status):
    """The response is an RFC 9457 problem with this status; returns its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert "type" in body
    assert "Traceback" not in response.get_data(as_text=True)
    return body


@pytest.fixture
def servers(tmp_path):
    """Start mlapi under real gunicorn processes; every one is stopped at the end."""
    from tests.servers import Gunicorn

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

    from tests.servers import RedisServer

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
    from tests.servers import PostgresServer

    reason = PostgresServer.available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; under CI=true this is a failure, not a skip")
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    server.cleanup()
