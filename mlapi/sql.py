"""SQL on the DB-API drivers themselves: sqlite3 for SQLite, psycopg 3 for PostgreSQL.

No SQLAlchemy in a serving process (it cost each gunicorn worker about 14 MiB, plus
2.4 MiB for its PostgreSQL dialect). Statements are written once with ``:name``
parameters; PostgreSQL gets them as psycopg's ``%(name)s``.

- :func:`parse_url` reads the URL forms mlapi accepts (``sqlite:///path``, ``sqlite://``
  for memory, ``postgresql+psycopg://user:pw@host:port/db?param=value``).
- :class:`Database` keeps one connection per thread (per process: never across a fork),
  in autocommit: a read is one statement, a write a :meth:`Database.transaction`. An
  in-memory SQLite database is one connection every thread shares, under a lock.
- A PostgreSQL connection that a database restart broke is opened again and the
  statement (a read, or a transaction's BEGIN: nothing was done yet) tried once more;
  one that missed its deadline (mlapi.postgres) is not, so a frozen server costs one
  deadline.
- Driver errors come out as :class:`Unavailable` (down, locked, too slow: a 503),
  :class:`IntegrityError`, :class:`DataError` or :class:`DatabaseError`, the driver's
  own exception as ``__cause__``.
- :meth:`Database.listen` calls a function before every statement (the tests count
  statements with it).
"""

import contextlib
import os
import re
import sqlite3
import threading
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, unquote

__all__ = [
    "URL",
    "DataError",
    "Database",
    "DatabaseError",
    "IntegrityError",
    "Unavailable",
    "parse_url",
]


class DatabaseError(Exception):
    """A database error; the driver's exception is ``__cause__``."""


class Unavailable(DatabaseError):
    """The database is down, locked, or too slow."""


class IntegrityError(DatabaseError):
    """A constraint refused the write (e.g. a unique name)."""


class DataError(DatabaseError):
    """A value the database cannot store (e.g. a NUL character in PostgreSQL text)."""


# SQLAlchemy's URL grammar (sqlalchemy.engine.url._parse_url), so that every URL accepted
# before is read the same way.
_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)
DRIVERS = {"sqlite": ("sqlite", "sqlite+pysqlite"), "postgresql": ("postgresql+psycopg",)}


@dataclass(frozen=True)
class URL:
    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: dict = field(default_factory=dict)

    @property
    def backend(self):
        """ "sqlite" or "postgresql"."""
        return self.drivername.partition("+")[0]

    def shown(self):
        """The URL with the password hidden, for messages."""
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":***"
            auth += "@"
        host = self.host or ""
        if host and ":" in host:
            host = f"[{host}]"
        port = f":{self.port}" if self.port is not None else ""
        database = f"/{self.database}" if self.database is not None else ""
        query = "&".join(f"{key}={value}" for key, value in self.query.items())
        return f"{self.drivername}://{auth}{host}{port}{database}" + (f"?{query}" if query else "")


def parse_url(text):
    """The URL in ``text``; ValueError if it is not a database URL mlapi can use."""
    match = _URL.match(text or "")
    if match is None:
        raise ValueError("not a database URL like 'postgresql+psycopg://user:pw@host/db'")
    parts = match.groupdict()
    name = parts["name"].lower()
    if name in ("postgres", "postgresql"):
        name = "postgresql+psycopg"
    if name not in DRIVERS["sqlite"] + DRIVERS["postgresql"]:
        raise ValueError(
            "not a database mlapi supports: use sqlite:///path or "
            "postgresql+psycopg://user:pw@host/db"
        )
    port = parts["port"]
    if port:
        try:
            port = int(port)
        except ValueError:
            raise ValueError(f"the port {port!r} is not a number") from None
    return URL(
        drivername=name,
        username=unquote(parts["username"]) if parts["username"] is not None else None,
        password=unquote(parts["password"]) if parts["password"] is not None else None,
        host=parts["ipv6host"] or parts["ipv4host"],
        port=port or None,
        database=parts["database"],
        query=dict(parse_qsl(parts["query"] or "", keep_blank_values=True)),
    )


def sqlite_target(url, instance_path):
    """(name for sqlite3.connect, uri flag, file path or None for memory) of a SQLite URL;
    a relative file path is under the instance folder."""
    query = dict(url.query)
    is_uri = query.pop("uri", "false").lower() in ("true", "1")
    if url.database in (None, "", ":memory:"):
        return ":memory:", False, None
    path = url.database[5:] if is_uri and url.database.startswith("file:") else url.database
    if not os.path.isabs(path):
        path = os.path.join(instance_path, path)
    if is_uri:
        extra = "&".join(f"{key}={value}" for key, value in query.items() if key != "timeout")
        return f"file:{path}" + (f"?{extra}" if extra else ""), True, path
    return path, False, path


class _SQLiteConnection(sqlite3.Connection):
    """sqlite3's connection, weakly referable (Database.dispose finds the open ones)."""


def _sqlite_time(value):
    # The text SQLAlchemy's SQLite DateTime stored (UTC wall clock): existing rows compare.
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_read_time(value):
    return None if value is None else datetime.fromisoformat(value)


class Database:
    """Connections to one database, per thread; see the module's docstring."""

    def __init__(self, url, timeout, connect_args=None, instance_path="."):
        """``url`` as text (see :func:`parse_url`); ``timeout`` bounds every wait (SQLite's
        for a lock; the PostgreSQL deadline of mlapi.postgres); ``connect_args`` are
        psycopg's connection parameters."""
        self.url_text = url
        self.url = parse_url(url)
        self.instance_path = instance_path
        self.dialect = self.url.backend
        self.timeout = float(timeout)
        self.connect_args = dict(connect_args or {})
        self.path = None
        self._listeners = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened = weakref.WeakKeyDictionary()  # raw connection: pid, for dispose()
        self._generation = 0
        self._shared = None
        self._shared_lock = threading.RLock()
        self._translated = {}
        if self.dialect == "sqlite":
            self.target, self.uri, self.path = sqlite_target(self.url, instance_path)
            self.in_memory = self.path is None
            self.errors = (sqlite3.Error,)
        else:
            import psycopg  # only PostgreSQL deployments load it

            self._psycopg = psycopg
            self.in_memory = False
            self.errors = (psycopg.Error,)

    # --- values that differ between the drivers ---

    def time(self, value):
        """An aware datetime as this database stores it."""
        return _sqlite_time(value) if self.dialect == "sqlite" else value

    def read_time(self, value):
        """A stored datetime as a datetime (naive UTC from SQLite, as SQLAlchemy gave)."""
        return _sqlite_read_time(value) if self.dialect == "sqlite" else value

    # --- statement hook ---

    def listen(self, function):
        """Call ``function(statement, parameters)`` before each statement this database
        runs (not BEGIN, COMMIT, ROLLBACK or a reconnection). For tests that count SQL."""
        self._listeners.append(function)

    def unlisten(self, function):
        if function in self._listeners:
            self._listeners.remove(function)

    # --- connections ---

    def _open(self):
        if self.dialect == "sqlite":
            raw = sqlite3.connect(
                self.target,
                timeout=float(self.url.query.get("timeout", self.timeout)),
                isolation_level=None,
                # Used by one thread (or, in memory, under a lock); dispose() may close
                # it from another.
                check_same_thread=False,
                uri=self.uri,
                factory=_SQLiteConnection,
            )
        else:
            from mlapi.postgres import DeadlineConnection

            url = self.url
            params = {
                "host": url.host,
                "port": url.port,
                "user": url.username,
                "password": url.password,
                "dbname": url.database or None,
                # libpq parameters in the URL, then mlapi's bounds (as SQLAlchemy gave them).
                **url.query,
                **self.connect_args,
            }
            params = {key: value for key, value in params.items() if value is not None}
            raw = DeadlineConnection.connect(autocommit=True, **params)
            raw.deadline = self.timeout
        with self._lock:
            self._opened[raw] = os.getpid()
        return raw

    def _broken(self, raw):
        """Whether ``raw`` can no longer be used."""
        return self.dialect == "postgresql" and raw.closed

    def shared(self):
        """The one connection of an in-memory SQLite database."""
        return self._checkout()[0]

    def _checkout(self):
        """(this thread's connection, whether it was open before)."""
        if self.in_memory:
            if self._shared is None:
                self._shared = self._open()
            return self._shared, True
        state = getattr(self._local, "state", None)
        key = (os.getpid(), self._generation)
        if state is not None and state[0] == key and not self._broken(state[1]):
            return state[1], True
        raw = self._open()
        self._local.state = (key, raw)
        return raw, False

    def _reopen(self):
        self._local.state = None
        raw, _ = self._checkout()
        return raw

    @contextlib.contextmanager
    def _using(self):
        """Driver errors mapped to this module's; the shared in-memory connection locked."""
        with self._shared_lock if self.in_memory else contextlib.nullcontext():
            try:
                yield
            except self.errors as exc:
                raise self._map(exc) from exc

    def _map(self, exc):
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        driver = sqlite3 if self.dialect == "sqlite" else self._psycopg
        kinds = (
            ((driver.OperationalError, driver.InterfaceError), Unavailable),
            (driver.IntegrityError, IntegrityError),
            (driver.DataError, DataError),
        )
        for classes, kind in kinds:
            if isinstance(exc, classes):
                return kind(message)
        return DatabaseError(message)

    @contextlib.contextmanager
    def connect(self):
        """A :class:`Connection` of this thread in autocommit: each statement on its own.

        Inside this thread's :meth:`transaction`, the statements join the transaction.
        """
        with self._using():
            raw, reused = self._checkout()
            yield Connection(self, raw, retry=reused and not self._in_transaction())

    @contextlib.contextmanager
    def transaction(self):
        """A :class:`Connection` in a transaction: committed at the end of the block, or
        rolled back if it raises."""
        with self._using():
            if self._in_transaction():
                raise RuntimeError("a transaction is already open on this thread")
            raw, reused = self._checkout()
            raw = self._begin(raw, reused)
            self._local.transaction = True
            try:
                yield Connection(self, raw, retry=False)
            except BaseException:
                self._local.transaction = False
                if not self._broken(raw):
                    with contextlib.suppress(*self.errors):
                        raw.execute("ROLLBACK")
                raise
            self._local.transaction = False
            try:
                raw.execute("COMMIT")
            except self.errors:
                if not self._broken(raw):
                    with contextlib.suppress(*self.errors):
                        raw.execute("ROLLBACK")
                raise

    def _in_transaction(self):
        return getattr(self._local, "transaction", False)

    def _begin(self, raw, reused):
        try:
            raw.execute("BEGIN")
        except self.errors as exc:
            if not (reused and self._restartable(raw, exc)):
                raise
            raw = self._reopen()
            raw.execute("BEGIN")
        return raw

    def _restartable(self, raw, exc):
        """A reused PostgreSQL connection found broken (the server restarted), not one
        given up on after its deadline: open a new one and try once more."""
        from mlapi.postgres import DeadlineExceeded

        return (
            self.dialect == "postgresql"
            and isinstance(exc, self._psycopg.OperationalError)
            and not isinstance(exc, DeadlineExceeded)
            and raw.closed
        )

    def translate(self, statement):
        """``statement`` in the driver's parameter style."""
        if self.dialect == "sqlite":
            return statement
        text = self._translated.get(statement)
        if text is None:
            text = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", statement.replace("%", "%%"))
            self._translated[statement] = text
        return text

    def dispose(self):
        """Close every connection this process opened; threads open new ones on next use."""
        with self._lock:
            opened, self._opened = list(self._opened.items()), weakref.WeakKeyDictionary()
            self._generation += 1
        self._shared = None
        for raw, pid in opened:
            if pid == os.getpid():
                with contextlib.suppress(Exception):
                    raw.close()


class Connection:
    """Runs statements on one of :class:`Database`'s connections."""

    def __init__(self, database, raw, retry):
        self.database = database
        self.raw = raw
        # A reused connection may have been broken by a restart: its first statement
        # (a read, outside any transaction) is tried once more on a new connection.
        self._retry = retry
        self.dialect = database.dialect

    def execute(self, statement, parameters=None):
        """Run ``statement`` (``:name`` parameters); the driver's cursor."""
        database = self.database
        for listener in database._listeners:
            listener(statement, parameters)
        text = database.translate(statement)
        parameters = parameters or {}
        try:
            return self.raw.execute(text, parameters)
        except database.errors as exc:
            if not (self._retry and database._restartable(self.raw, exc)):
                raise
            self.raw = database._reopen()
            return self.raw.execute(text, parameters)
        finally:
            self._retry = False

    def first(self, statement, parameters=None):
        """The first row, or None."""
        return self.execute(statement, parameters).fetchone()

    def scalar(self, statement, parameters=None):
        """The first column of the first row, or None."""
        row = self.first(statement, parameters)
        return None if row is None else row[0]

    def all(self, statement, parameters=None):
        return self.execute(statement, parameters).fetchall()
