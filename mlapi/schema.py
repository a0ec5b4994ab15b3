"""The schema as SQLAlchemy tables, and the Alembic upgrade: for migrations and the CLI only.

Serving processes never import this module (SQLAlchemy and Alembic cost each worker
about 14 and 10 MiB). Their SQL is plain text on the drivers (mlapi.sql); these tables
are what Flask-Migrate compares the models with (``flask db migrate``) and what the
migrations' env.py reads (:class:`MigrationTarget`). A process that finds its database
behind runs ``python -m mlapi.schema`` (:func:`main`) to upgrade it, under the lock of
mlapi.database, so that Alembic is loaded by that short-lived child, not by the server.
"""

import json
import logging
import sqlite3
import sys
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import Flask
from flask_migrate import Migrate, upgrade

from mlapi.migrations import DIRECTORY as MIGRATIONS
from mlapi.migrations import EXIT_UNAVAILABLE

metadata = sa.MetaData()

user_table = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # As spelt at creation, for display (token "sub", /users/me).
    sa.Column("username", sa.String(64), unique=True, nullable=False),
    # What names are compared by (credentials.username_key): every lookup uses it.
    sa.Column("username_key", sa.String(256), unique=True, index=True, nullable=False),
    sa.Column("email", sa.String(254)),
    sa.Column("password_hash", sa.String(256), nullable=False),
    sa.Column("role", sa.String(16), default="user", nullable=False),
    sa.Column("disabled", sa.Boolean, default=False, nullable=False),
    sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        default=lambda: datetime.now(UTC),
        nullable=False,
    ),
    # Carried by every token as the "tkey" claim and compared on each request. A new
    # random key on creation, password change or disabling ends every earlier session,
    # including those of a deleted user whose name is taken again.
    sa.Column("token_key", sa.String(32)),
)

revoked_table = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("sid", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), index=True, nullable=False),
)


class MigrationTarget:
    """What Flask-Migrate and env.py read: ``metadata``, and an engine on the database of
    an mlapi.sql :class:`~mlapi.sql.Database`."""

    def __init__(self, database):
        self.metadata = metadata
        self.database = database
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            self._engine = engine_for(self.database)
        return self._engine


class _Unclosable:
    """A connection whose ``close`` does nothing: the engine's end is not the database's."""

    def __init__(self, raw):
        object.__setattr__(self, "_raw", raw)

    def __getattr__(self, name):
        return getattr(self._raw, name)

    def __setattr__(self, name, value):
        setattr(self._raw, name, value)

    def close(self):
        pass


def engine_for(database):
    """A SQLAlchemy engine on the same database and with the same bounds as ``database``."""
    if database.in_memory:
        # The one connection every thread shares (a second would see another database).
        shared = _Unclosable(database.shared())
        return sa.create_engine("sqlite://", creator=lambda: shared, poolclass=sa.pool.StaticPool)
    url = database.url
    if database.dialect == "sqlite":
        # sqlite3's own transaction handling (not mlapi.sql's autocommit), as SQLAlchemy
        # expects: each migration is one transaction.
        return sa.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(
                database.target, timeout=database.timeout, uri=database.uri
            ),
            poolclass=sa.pool.NullPool,
        )
    sa_url = sa.engine.URL.create(
        "postgresql+psycopg",
        username=url.username,
        password=url.password,
        host=url.host,
        port=url.port,
        database=url.database or None,
        query=url.query,
    )
    return sa.create_engine(
        sa_url, poolclass=sa.pool.NullPool, connect_args=dict(database.connect_args)
    )


def upgrade_database(database):
    """Run every pending migration on ``database`` in this process (Alembic loaded)."""
    app = Flask("mlapi.schema")
    Migrate(app, MigrationTarget(database), directory=MIGRATIONS)
    with app.app_context():
        upgrade(directory=MIGRATIONS)
    target = app.extensions["migrate"].db
    if target._engine is not None:
        target._engine.dispose()


def main():
    """``python -m mlapi.schema``: upgrade the database described by the JSON on stdin
    ({"url", "instance_path", "timeout", "connect_args"}); exit 1 if a migration refused (Flask-Migrate
    logs why), 3 if the database is unavailable."""
    from mlapi.sql import Database

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    spec = json.loads(sys.stdin.read())
    database = Database(
        spec["url"], spec["timeout"], spec["connect_args"], instance_path=spec["instance_path"]
    )
    try:
        upgrade_database(database)
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
        print(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0], file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE)


if __name__ == "__main__":
    main()
