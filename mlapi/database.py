"""The SQL database: connections (mlapi.sql), the schema migrated on first use, and the
one way to change users or revocations (config.py derives the settings).

Serving processes use the DB-API drivers through mlapi.sql, without SQLAlchemy: the
tables are plain SQL in mlapi.users and mlapi.revocation.

The schema is managed by Alembic (Flask-Migrate; mlapi.schema holds the SQLAlchemy
tables). Every process that starts reads the database's revision with one SELECT and
compares it with the newest migration's; if they differ it runs the upgrade under a
lock, in a child process (``python -m mlapi.schema``), so a fresh database works with
no extra step, concurrent workers or hosts never race to create it, and neither
SQLAlchemy nor Alembic stays in the server's memory (about 24 MiB per worker).
"""

import contextlib
import fcntl
import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import current_app

from mlapi import migrations, sql
from mlapi.extensions import db

log = logging.getLogger(__name__)

MIGRATIONS = migrations.DIRECTORY
# pg_advisory_lock key: any constant shared by every mlapi process.
SCHEMA_LOCK_KEY = 7_266_241_001
# Seconds to wait for another process's schema upgrade.
SCHEMA_LOCK_WAIT = 120


# The database is down, locked, or too slow: a 503 for the API, one sentence for the CLI.
UNAVAILABLE = (sql.Unavailable,)


def unavailable_reason(exc):
    """The first line of the driver's message, e.g. "database is locked"."""
    original = exc.__cause__ or exc
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
    with db.transaction() as conn:
        yield conn
    principals = current_app.extensions.get("mlapi.principals")
    if principals is not None:  # identity.init_app sets it
        principals.changed()


class MigrationRefused(RuntimeError):
    """A migration that stopped before changing anything; its message says what to fix."""


@contextlib.contextmanager
def schema_lock():
    """Hold a lock that serialises schema upgrades across processes."""
    if db.dialect == "postgresql":
        with db.connect() as conn:
            # Asked again and again rather than waited for in one statement, which the
            # statement timeout would end while another process migrates.
            deadline = time.monotonic() + SCHEMA_LOCK_WAIT
            while not conn.scalar("SELECT pg_try_advisory_lock(:k)", {"k": SCHEMA_LOCK_KEY}):
                if time.monotonic() > deadline:
                    raise sql.Unavailable(
                        f"another process held the schema lock for {SCHEMA_LOCK_WAIT} s"
                    )
                time.sleep(0.2)
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(:k)", {"k": SCHEMA_LOCK_KEY})
        return
    if db.in_memory:
        yield  # no other process can see this database
        return
    # Beside the database file, not in the instance folder: processes that name the same
    # file from different instance folders (a server and a CLI) must share one lock.
    path = f"{db.path}.schema-lock"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_private_folder(path):
    """Create the folder ``path`` readable by the owner only; an existing one keeps its mode."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def create_sqlite_file(database):
    """Create a file-backed SQLite database as an empty file of mode 0600 before SQLite does.

    SQLite creates files with mode 0644 (less the umask) and gives its journal and WAL
    files the database file's mode, so the password hashes stay the owner's.
    """
    path = database.path
    if database.dialect != "sqlite" or path is None or database.uri:
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


def _no_such_table(exc):
    cause = exc.__cause__
    # PostgreSQL: undefined_table; SQLite: "no such table: alembic_version".
    return getattr(cause, "sqlstate", None) == "42P01" or "no such table" in str(cause)


def current_revision():
    """The database's Alembic revision, or None for a fresh database."""
    try:
        with db.connect() as conn:
            return conn.scalar("SELECT version_num FROM alembic_version")
    except sql.DatabaseError as exc:
        if _no_such_table(exc):
            return None
        raise


def init_migrations(app):
    """Bind Flask-Migrate (for ``upgrade`` and the ``flask db`` commands): loads SQLAlchemy
    and Alembic, for the CLI."""
    from flask_migrate import Migrate

    from mlapi.schema import MigrationTarget

    if "migrate" not in app.extensions:
        Migrate(app, MigrationTarget(app.extensions["mlapi.sql"]), directory=MIGRATIONS)


def ensure_schema(app):
    """Bring the schema to the latest migration (idempotent)."""
    with app.app_context():
        head = head_revision()
        if current_revision() == head:
            return
        with schema_lock():
            if current_revision() != head:  # or another process did it meanwhile
                upgrade(db._get_current_object())


def upgrade(database):
    """Run the pending migrations: here for an in-memory database (no other process can
    see it), else in a child process, so that this one never loads Alembic.

    A migration that refuses (Flask-Migrate logs why) exits as Flask-Migrate does,
    with status 1, after logging the child's report here.
    """
    if database.in_memory:
        from mlapi.schema import upgrade_database

        upgrade_database(database)
        return
    spec = {
        "url": database.url_text,
        "instance_path": database.instance_path,
        "timeout": database.timeout,
        "connect_args": database.connect_args,
    }
    # The folder that holds the mlapi package, wherever this process found it.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "mlapi.schema"],
        input=json.dumps(spec),  # on stdin: a password in the URL stays out of ps
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )
    report = done.stderr.strip()
    if done.returncode == 0:
        return
    if done.returncode == migrations.EXIT_UNAVAILABLE:
        raise sql.Unavailable(report.splitlines()[-1] if report else "unavailable")
    log.error("The database schema could not be upgraded:\n%s", report)
    raise SystemExit(1)


def database_for(app):
    """The app's :class:`mlapi.sql.Database`, from DATABASE_URI and DATABASE_CONNECT_ARGS
    (config.py derives them)."""
    return sql.Database(
        app.config["DATABASE_URI"],
        float(app.config["DATABASE_TIMEOUT"]),
        app.config.get("DATABASE_CONNECT_ARGS", {}),
        instance_path=app.instance_path,
    )


def init_app(app):
    """Connect to the database (config.py derived its settings) and migrate it."""
    make_private_folder(app.instance_path)
    database = app.extensions["mlapi.sql"] = database_for(app)
    create_sqlite_file(database)
    if app.config.get("AUTO_MIGRATE", True):
        try:
            ensure_schema(app)
        except UNAVAILABLE:
            if click.get_current_context(silent=True) is None:
                raise
            # Loaded for a CLI command: the command reports the failure in one sentence
            # (mlapi.cli), instead of a traceback from the app's import.
            app.extensions["mlapi.schema_pending"] = True
