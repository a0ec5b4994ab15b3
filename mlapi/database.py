"""The SQL database: the schema, migrated on first use (config.py sets up the engine).

The schema is managed by Alembic (Flask-Migrate). Every process that starts
checks the database's revision against the newest migration; if they differ it
runs ``upgrade`` under a lock, so a fresh database works with no extra step and
concurrent workers or hosts never race to create it. Alembic is imported only
when there is something to upgrade (it costs each worker about 10 MiB).
"""

import contextlib
import fcntl
import logging
import os
import re
import stat
from pathlib import Path

import click
import sqlalchemy as sa

from mlapi.extensions import db

log = logging.getLogger(__name__)

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")
# pg_advisory_lock key: any constant shared by every mlapi process.
SCHEMA_LOCK_KEY = 7_266_241_001


# The database is down, locked, or too slow: a 503 for the API, one sentence for the CLI.
UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


def unavailable_reason(exc):
    """The first line of the driver's message, e.g. "database is locked"."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines() or [type(original).__name__]
    return lines[0].strip().rstrip(".")[:200]


def discard_session(_exc=None):
    """End the request's session; a rollback the database cannot answer (it froze after
    the last query) costs its deadline, then the connection is dropped, never an error."""
    try:
        db.session.remove()
    except UNAVAILABLE as exc:
        log.warning("session rollback failed (%s); connection dropped", unavailable_reason(exc))
        db.session.registry.clear()


class MigrationRefused(RuntimeError):
    """A migration that stopped before changing anything; its message says what to fix."""


@contextlib.contextmanager
def schema_lock(app):
    """Hold a lock that serialises schema upgrades across processes."""
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY})
                conn.commit()
        return
    make_private_folder(app.instance_path)
    path = os.path.join(app.instance_path, "schema.lock")
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_private_folder(path):
    """Create the folder ``path`` readable by the owner only; an existing one keeps its mode."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def create_sqlite_file(url):
    """Create a file-backed SQLite database as an empty file of mode 0600 before SQLite does.

    SQLite creates files with mode 0644 (less the umask) and gives its journal and WAL
    files the database file's mode, so the password hashes stay the owner's.
    """
    url = sa.engine.make_url(url)
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:" or url.query:
        return
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return  # SQLite reports the missing folder itself
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        # Made by an earlier release, or by hand: say so, but leave the operator's file be.
        log.warning(
            "The SQLite database %s (password hashes) is readable by other users; "
            "restrict it with: chmod 600 %s",
            path,
            path,
        )


def head_revision():
    """The newest migration's revision id: the one no other migration revises."""
    revisions, parents = set(), set()
    for path in Path(MIGRATIONS, "versions").glob("*.py"):
        text = path.read_text()
        revisions.add(re.search(r"^revision = ['\"](\w+)['\"]", text, re.M).group(1))
        parent = re.search(r"^down_revision = ['\"](\w+)['\"]", text, re.M)
        if parent:
            parents.add(parent.group(1))
    (head,) = revisions - parents
    return head


def current_revision():
    """The database's Alembic revision, or None for a fresh database."""
    try:
        with db.engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except sa.exc.ProgrammingError:  # PostgreSQL: no such table
        return None
    except sa.exc.OperationalError as exc:  # SQLite: no such table; anything else is real
        if "no such table" in str(exc):
            return None
        raise


def init_migrations(app):
    """Bind Flask-Migrate (for ``upgrade`` and the ``flask db`` commands)."""
    from flask_migrate import Migrate

    if "migrate" not in app.extensions:
        Migrate(app, db, directory=MIGRATIONS)


def ensure_schema(app):
    """Bring the schema to the latest migration (idempotent)."""
    with app.app_context():
        if current_revision() == head_revision():
            return
        from flask_migrate import upgrade

        init_migrations(app)
        with schema_lock(app):
            upgrade(directory=MIGRATIONS)


def init_app(app):
    """Bind the database (config.py derived its SQLALCHEMY_* settings) and migrate it."""
    make_private_folder(app.instance_path)
    create_sqlite_file(app.config["SQLALCHEMY_DATABASE_URI"])
    db.init_app(app)
    # Registered after Flask-SQLAlchemy's own teardown, so it runs first (reverse order).
    app.teardown_appcontext(discard_session)
    with app.app_context():
        if db.engine.dialect.driver == "psycopg":
            # Imported only here: SQLite deployments do without psycopg.
            from mlapi.postgres import connect_with_deadline

            deadline = float(app.config["DATABASE_TIMEOUT"])
            sa.event.listen(db.engine, "do_connect", connect_with_deadline(deadline))
    if app.config.get("AUTO_MIGRATE", True):
        try:
            ensure_schema(app)
        except UNAVAILABLE:
            if click.get_current_context(silent=True) is None:
                raise
            # Loaded for a CLI command: the command reports the failure in one sentence
            # (mlapi.cli), instead of a traceback from the app's import.
            app.extensions["mlapi.schema_pending"] = True
