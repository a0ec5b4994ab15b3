"""The connections mlapi.sql opens: config's bounds, the SQLite paths and sharing rules,
URL parsing, error mapping and reconnection."""

import subprocess
import sys
import threading

import pytest

from mlapi import sql, users
from mlapi.extensions import db
from tests.helpers import PASSWORD, ROOT


def test_relative_sqlite_path_is_under_the_instance_folder(make_app, tmp_path):
    app = make_app(DATABASE_URL="sqlite:///relative.db")
    with app.app_context():
        assert db.path == str(tmp_path / "instance" / "relative.db")
        users.create("alice", PASSWORD)
    assert (tmp_path / "instance" / "relative.db").stat().st_size > 0


def test_in_memory_sqlite_is_one_database_for_every_thread(make_app):
    """One shared connection: each thread would otherwise get an empty database of its own."""
    app = make_app(DATABASE_URL="sqlite:///:memory:")
    with app.app_context():
        assert db.in_memory
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


def test_each_thread_has_its_own_sqlite_connection(app):
    with app.app_context(), db.connect() as conn:
        mine = conn.raw
    theirs = []

    def look():
        with app.app_context(), db.connect() as conn:
            theirs.append(conn.raw)

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine
    with app.app_context(), db.connect() as conn:
        assert conn.raw is mine  # kept for the thread's next statement


def test_postgres_connections_keep_the_configured_bounds(make_app, postgres_url):
    """config.connect_arguments reach each connection (libpq's timeouts and the server's
    statement timeout), and connections carry mlapi.postgres's client-side deadline."""
    from mlapi.postgres import DeadlineConnection

    app = make_app(DATABASE_URL=postgres_url, DATABASE_TIMEOUT=3.0)
    with app.app_context(), db.connect() as conn:
        assert conn.scalar("SHOW statement_timeout") == "3s"
        raw = conn.raw
        assert isinstance(raw, DeadlineConnection) and raw.deadline == 3.0
        parameters = raw.info.get_parameters()
        assert parameters["connect_timeout"] == "3"
        assert parameters["tcp_user_timeout"] == "3000"
        assert parameters["keepalives"] == "1"


def test_postgres_connection_broken_by_a_restart_is_opened_again(make_app, postgres_url):
    """A server that ended the connection (as a restart does): the next read opens a new
    one and succeeds, as SQLAlchemy's pre-ping did."""
    app = make_app(DATABASE_URL=postgres_url)
    with app.app_context():
        with db.connect() as conn:
            pid = conn.scalar("SELECT pg_backend_pid()")
        other = sql.Database(app.config["DATABASE_URI"], 2.0)
        with other.connect() as conn:
            assert conn.scalar("SELECT pg_terminate_backend(:pid)", {"pid": pid}) is True
        other.dispose()
        with db.connect() as conn:
            assert conn.scalar("SELECT pg_backend_pid()") != pid
        users.create("alice", PASSWORD)  # a transaction on the new connection
        assert users.find("alice") is not None


def test_postgres_statement_timeout_is_unavailable_and_not_retried(make_app, postgres_url):
    app = make_app(DATABASE_URL=postgres_url, DATABASE_TIMEOUT=0.5)
    calls = []
    with app.app_context():
        db.listen(lambda statement, _parameters: calls.append(statement))
        with pytest.raises(sql.Unavailable) as raised, db.connect() as conn:
            conn.execute("SELECT pg_sleep(2)")
        # The server's statement timeout or the client's deadline, whichever ends it first.
        cause = str(raised.value.__cause__)
        assert "statement timeout" in cause or "did not answer within 0.5s" in cause
        assert len(calls) == 1
        with db.connect() as conn:  # the next statement works
            assert conn.scalar("SELECT 1") == 1


def test_unique_violation_is_an_integrity_error_and_rolls_back(app):
    with app.app_context():
        users.create("alice", PASSWORD)
        with pytest.raises(sql.IntegrityError), db.transaction() as conn:
            conn.execute("DELETE FROM revoked_tokens")
            conn.execute(
                "INSERT INTO users (username, username_key, password_hash, role, disabled,"
                " created_at) VALUES ('Alice', 'alice', 'x', 'user', false, CURRENT_TIMESTAMP)"
            )
        with db.transaction() as conn:  # no transaction was left open
            conn.execute("DELETE FROM revoked_tokens")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sqlite://", ("sqlite", None, None)),
        ("sqlite:///rel/x.db", ("sqlite", None, "rel/x.db")),
        ("sqlite:////abs/x.db", ("sqlite", None, "/abs/x.db")),
        ("postgres://u:p%40ss@db:5433/mlapi", ("postgresql+psycopg", "db", "mlapi")),
        ("postgresql://u@db/mlapi?sslmode=require", ("postgresql+psycopg", "db", "mlapi")),
        ("postgresql+psycopg://u@[::1]:5432/m", ("postgresql+psycopg", "::1", "m")),
    ],
)
def test_urls_are_read_as_sqlalchemy_read_them(text, expected):
    url = sql.parse_url(text)
    assert (url.drivername, url.host, url.database) == expected


def test_url_parts_and_hidden_password():
    url = sql.parse_url("postgresql+psycopg://u:p%40ss@db:5433/mlapi?sslmode=require")
    assert (url.username, url.password, url.port, url.query) == (
        "u",
        "p@ss",
        5433,
        {"sslmode": "require"},
    )
    assert url.shown() == "postgresql+psycopg://u:***@db:5433/mlapi?sslmode=require"


@pytest.mark.parametrize("text", ["not a url", "mysql://u@h/db", "postgresql+psycopg2://u@h/db"])
def test_unusable_urls_are_refused(text):
    with pytest.raises(ValueError):
        sql.parse_url(text)


# A process that builds the app and prints the schema revision it then finds.
STARTER = """
import sys
from config import TestingConfig
from mlapi import create_app
from mlapi.database import current_revision

settings = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
settings.update(DATABASE_URL=sys.argv[1], DATABASE_TIMEOUT=0.5)
app = create_app(settings, instance_path=sys.argv[2])
with app.app_context():
    print(current_revision())
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_processes_starting_together_on_a_fresh_database_upgrade_it_once(
    make_app, backend, tmp_path, request
):
    """Under the schema lock one upgrades (in a child process) while the others wait, longer
    than the statement timeout if need be; every process then finds the schema at head.

    Real processes, as gunicorn starts them: apps built in threads of one process would
    also race in werkzeug's route compiler, whose ast.parse is not thread-safe on 3.11."""
    from mlapi.database import current_revision, head_revision

    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'fresh.db'}"  # not the migrated copy make_app starts on
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, url, str(tmp_path / f"instance-{n}")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    results = [starter.communicate(timeout=120) for starter in starters]
    app = make_app(DATABASE_URL=url)
    with app.app_context():
        head = head_revision()
        assert current_revision() == head
        users.create("alice", PASSWORD)
    for starter, (out, err) in zip(starters, results, strict=True):
        assert starter.returncode == 0, err
        assert out.split() == [head]
