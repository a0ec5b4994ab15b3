"""The SQL database: the engine, the schema migrated on first use, and the one way to
change users or revocations (config.py derives the engine's settings).

The request path uses SQLAlchemy Core only: tables on ``db.metadata`` (mlapi.users,
mlapi.revocation) and connections of an engine built here, without an ORM session.

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
from flask import current_app

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


@contextlib.contextmanager
def identity_change():
    """A transaction that changes users or revocations: committed at the end of the
    block, then announced to every worker (mlapi.identity), or rolled back on an error.

    Every write to those tables goes through here: it is the one place that announces
    them, so each worker's cache of token users (mlapi.identity) sees the change on its
    next request.
    """
    with db.engine.begin() as conn:
        yield conn
    principals = current_app.extensions.get("mlapi.principals")
    if principals is not None:  # identity.init_app sets it
        principals.changed()


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


def engine_arguments(url, options, instance_path):
    """The URL and options to build the engine with: ``options`` plus the defaults
    Flask-SQLAlchemy 3.1 gave, which mlapi relied on before it built its own engine.

    SQLite: a relative file path is under the instance folder; an in-memory database
    is one connection shared by every thread (StaticPool), or each connection would see
    a database of its own. MySQL: utf8mb4, and connections recycled after 2 hours.
    """
    url = sa.engine.make_url(url)
    options = dict(options)
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if url.database in (None, "", ":memory:"):
            options["poolclass"] = sa.pool.StaticPool
            options["connect_args"] = {
                **options.get("connect_args", {}),
                "check_same_thread": False,
            }
        else:
            # sqlite:///file:path?uri=true names the file after "file:".
            is_uri = url.query.get("uri", False)
            path = url.database[5:] if is_uri else url.database
            if not os.path.isabs(path):
                path = os.path.join(instance_path, path)
                url = url.set(database=f"file:{path}" if is_uri else path)
    elif url.drivername.startswith("mysql"):
        if options.get("poolclass", sa.pool.QueuePool) is sa.pool.QueuePool:
            options.setdefault("pool_recycle", 7200)
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
    return url, options


def create_engine(app):
    """The app's engine, from SQLALCHEMY_DATABASE_URI and SQLALCHEMY_ENGINE_OPTIONS."""
    url, options = engine_arguments(
        app.config["SQLALCHEMY_DATABASE_URI"],
        app.config.get("SQLALCHEMY_ENGINE_OPTIONS", {}),
        app.instance_path,
    )
    create_sqlite_file(url)
    engine = sa.create_engine(url, **options)
    if engine.dialect.driver == "psycopg":
        # Imported only here: SQLite deployments do without psycopg.
        from mlapi.postgres import connect_with_deadline

        deadline = float(app.config["DATABASE_TIMEOUT"])
        sa.event.listen(engine, "do_connect", connect_with_deadline(deadline))
    return engine


def init_app(app):
    """Build the engine (config.py derived its SQLALCHEMY_* settings) and migrate it."""
    make_private_folder(app.instance_path)
    app.extensions["mlapi.engine"] = create_engine(app)
    if app.config.get("AUTO_MIGRATE", True):
        try:
            ensure_schema(app)
        except UNAVAILABLE:
            if click.get_current_context(silent=True) is None:
                raise
            # Loaded for a CLI command: the command reports the failure in one sentence
            # (mlapi.cli), instead of a traceback from the app's import.
            app.extensions["mlapi.schema_pending"] = True
