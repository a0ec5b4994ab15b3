"""The engine mlapi builds itself: config's options, and the SQLite defaults that
Flask-SQLAlchemy used to apply."""

import threading

import sqlalchemy as sa

from mlapi import users
from mlapi.extensions import db
from tests.helpers import PASSWORD


def test_relative_sqlite_path_is_under_the_instance_folder(make_app, tmp_path):
    app = make_app(DATABASE_URL="sqlite:///relative.db")
    with app.app_context():
        assert db.engine.url.database == str(tmp_path / "instance" / "relative.db")
        users.create("alice", PASSWORD)
    assert (tmp_path / "instance" / "relative.db").stat().st_size > 0


def test_in_memory_sqlite_is_one_database_for_every_thread(make_app):
    """StaticPool: each thread would otherwise get an empty database of its own."""
    app = make_app(DATABASE_URL="sqlite:///:memory:")
    with app.app_context():
        assert isinstance(db.engine.pool, sa.pool.StaticPool)
        users.create("alice", PASSWORD)
    found = []

    def look():
        with app.app_context():
            found.append(users.find("alice") is not None)

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    assert found == [True]
    login = app.test_client().post("/token", data={"username": "alice", "password": PASSWORD})
    assert login.status_code == 200


def test_postgres_engine_keeps_the_configured_bounds(make_app, postgres_url):
    """config.engine_options reach the engine (pool timeout; libpq's timeouts and the
    server's statement timeout on each connection), and psycopg connections carry
    mlapi.postgres's client-side deadline."""
    from mlapi.postgres import DeadlineConnection

    app = make_app(DATABASE_URL=postgres_url, DATABASE_TIMEOUT=3.0)
    with app.app_context(), db.engine.connect() as conn:
        assert db.engine.pool.timeout() == 3.0
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "3s"
        dbapi = conn.connection.dbapi_connection
        assert isinstance(dbapi, DeadlineConnection) and dbapi.deadline == 3.0
        parameters = dbapi.info.get_parameters()
        assert parameters["connect_timeout"] == "3"
        assert parameters["tcp_user_timeout"] == "3000"
        assert parameters["keepalives"] == "1"
