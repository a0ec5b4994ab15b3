"""Shared fixtures: an app per test on a fresh database, clients, users and tokens.

Tests that need Redis or PostgreSQL use the ``redis_url`` / ``postgres_url``
fixtures: they skip with a reason when the server is unreachable, except under
``CI=true``, where a missing service fails the test.
"""

import shutil
import uuid

import pytest
import sqlalchemy as sa

from config import TestingConfig
from mlapi import create_app, users
from mlapi.extensions import db
from tests.helpers import PASSWORD, POSTGRES_URL, REDIS_URL, require_service


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


def _test_settings(**overrides):
    settings = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
    settings.update(REDIS_KEY_PREFIX=f"mlapi-test-{uuid.uuid4().hex[:8]}:")
    settings.update(overrides)
    return settings


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory):
    """A SQLite file at the newest migration, made once: each test's database starts as a
    copy of it, instead of a child process that upgrades a new file (about 1.5 s each).
    Tests of the upgrade itself name a database of their own."""
    folder = tmp_path_factory.mktemp("migrated")
    path = folder / "mlapi.db"
    app = create_app(_test_settings(DATABASE_URL=f"sqlite:///{path}"), instance_path=folder)
    with app.app_context():
        db.dispose()
    return path


@pytest.fixture
def make_app(tmp_path, backend, request):
    """Build apps on a fresh database with test settings; keyword arguments override config."""
    apps = []
    if backend == "postgres":
        database_url = request.getfixturevalue("postgres_url")
    else:
        fresh = tmp_path / "mlapi.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), fresh)
        database_url = f"sqlite:///{fresh}"

    def factory(**overrides):
        settings = _test_settings(**{"DATABASE_URL": database_url, **overrides})
        app = create_app(settings, instance_path=tmp_path / "instance")
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.dispose()


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
        db.dispose()
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
