"""Who a token's user is, without a SQL query on every request.

Each worker keeps the principals it read (the user's row and the session's revocation)
and serves them again while two things hold: the shared *generation* still has the
value it had when the row was read, and the row is younger than ``MAX_AGE`` seconds.
Every commit that changes users or revocations (create, delete, disable, enable,
password, role, logout) writes a new generation after it, in one place: the
transaction of :func:`mlapi.database.identity_change`, which every such write uses. So
a change made by any process is seen by every worker on its next request; ``MAX_AGE``
bounds only the case where the signal itself is lost (Redis unreachable when the change
was announced).

The generation is a fresh unique value in Redis (mlapi.ids, as the budget's script
starts one) when MLAPI_REDIS_URL is set. Without Redis (the embedded single-worker mode
on SQLite), it is SQLite's ``PRAGMA data_version`` on a connection of its own, which
changes whenever another connection or process commits (the CLI), plus a counter for
this process's own changes. An unknown generation (Redis unreachable, the value
missing, another database without Redis) means reading SQL, as without this cache. A
cached answer that would refuse a token is read again from SQL before it refuses.
"""

import logging
import sqlite3
import threading
import time

from mlapi import context, users
from mlapi.ids import process_id, unique_id

log = logging.getLogger(__name__)

MAX_AGE = 1.0
MAX_ENTRIES = 10_000


class RedisGeneration:
    """The generation as a random value under one Redis key, shared by every host."""

    def __init__(self, redis, breaker, key):
        self.redis = redis
        self.breaker = breaker
        self.key = key

    def current(self):
        """The value now, or None when Redis cannot say (then callers read SQL)."""
        try:
            value = self.breaker.call(self.redis.get, self.key)
        except Exception:
            return None
        if value is None:
            # First start, or Redis lost it (restart, eviction): start a generation; this
            # request reads SQL, later ones are stamped with the new value.
            try:
                self.redis.set(self.key, unique_id(), nx=True)
            except Exception:
                log.debug("could not start a generation", exc_info=True)
            return None
        return value.decode()

    def bump(self):
        # Tried even while the breaker is open: other workers may reach Redis and must
        # learn of the change; a failure here leaves them at most MAX_AGE behind.
        try:
            self.redis.set(self.key, unique_id())
        except Exception:
            log.warning("could not announce a user change in Redis", exc_info=True)


class SQLiteGeneration:
    """SQLite's data_version on a dedicated connection, plus this process's own changes."""

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._local = 0
        self._conn = None
        self._pid = None

    def _version(self):
        if self.path is None:  # an in-memory database lives in this process only
            return 0
        if self._pid != process_id():  # never share a connection across gunicorn's fork
            # No busy wait: a locked file means "unknown", and the SQL read that follows
            # waits MLAPI_DATABASE_TIMEOUT once (then 503) instead of twice.
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=0)
            self._pid = process_id()
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def current(self):
        try:
            with self._lock:
                return f"{self._version()}.{self._local}"
        except sqlite3.Error:
            return None

    def bump(self):
        with self._lock:
            self._local += 1


class _Flight:
    """One SQL read of a principal under way; the threads that wait for it share it."""

    __slots__ = ("done", "value")

    def __init__(self):
        self.done = threading.Event()
        self.value = None  # (principal, revoked) once read


class Principals:
    """A per-worker cache of ``users.load_principal``, keyed by user and session."""

    def __init__(self, source, load=None, clock=time.monotonic, wait=2.0):
        self.source = source
        self.load = load or users.load_principal
        self.clock = clock
        # How long a thread waits for another thread's read of the same principal before
        # reading it itself: the database's own deadline.
        self.wait = wait
        self._entries = {}
        self._flights = {}
        self._flights_lock = threading.Lock()
        # The newest generation this worker saw, from the source or the budget's script.
        self.known = None
        # Only a Redis generation can be checked later, in the budget's round trip.
        self.can_defer = isinstance(source, RedisGeneration)

    def generation(self):
        """The generation now, or None if unknown."""
        value = self.source.current() if self.source is not None else None
        if value is not None:
            self.known = value
        return value

    def observe(self, generation):
        self.known = generation

    def lookup(self, username, sid, accepted, deferred=False):
        """((Principal or None, revoked), stamp): read from SQL unless a fresh cache entry
        accepts the token.

        ``accepted(principal, revoked)`` says whether the answer lets the token in; an
        answer that refuses is never served from the cache. With ``deferred`` (and a
        Redis generation), the generation is not asked now: an entry of the newest
        generation this worker saw is served, and the returned stamp (that generation)
        must be checked by the caller before the request does anything (the budget's
        script does); the stamp is None when nothing is left to check.
        """
        deferred = deferred and self.can_defer
        generation = self.known if deferred else self.generation()
        if generation is None:
            return self.load(username, sid), None
        stamp = generation if deferred else None
        key = (username, sid)
        entry = self._entries.get(key)
        if entry is None or entry[0] != generation or not accepted(*entry[2]):
            return self._read(key, generation, accepted, stamp)
        age = self.clock() - entry[1]
        if age < MAX_AGE:
            return entry[2], stamp
        # Aged out: one thread of this worker reads it again; the others keep serving
        # the entry (of the current generation) meanwhile, up to twice MAX_AGE.
        meanwhile = entry[2] if age < 2 * MAX_AGE else None
        return self._read(key, generation, accepted, stamp, meanwhile)

    def _read(self, key, generation, accepted, stamp, meanwhile=None):
        """Read ``key`` from SQL, once per worker however many threads ask at once.

        The first thread to ask for a key under a generation reads it; the others serve
        ``meanwhile`` if given, else wait (at most ``self.wait``) and share that read,
        which began after the generation they saw was current. They return ``stamp``
        with it, since the read may predate their own request: a deferred caller still
        checks the generation. A failed or overlong read is tried again by each waiter.
        """
        with self._flights_lock:
            flight = self._flights.get((key, generation))
            leading = flight is None
            if leading:
                flight = self._flights[key, generation] = _Flight()
        if not leading:
            if meanwhile is not None:
                return meanwhile, stamp
            if flight.done.wait(self.wait) and flight.value is not None:
                return flight.value, stamp
            return self.reload(*key, generation), None
        try:
            # Another thread may have read it again between this one's look and now.
            entry = self._entries.get(key)
            if (
                entry is not None
                and entry[0] == generation
                and self.clock() - entry[1] < MAX_AGE
                and accepted(*entry[2])
            ):
                flight.value = entry[2]
                return entry[2], stamp
            flight.value = self.reload(*key, generation)
            return flight.value, None
        finally:
            with self._flights_lock:
                del self._flights[key, generation]
            flight.done.set()

    def reload(self, username, sid, generation):
        """Read from SQL; cached under ``generation``, which must predate the read."""
        value = self.load(username, sid)
        if generation is not None:
            self.known = generation
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[(username, sid)] = (generation, self.clock(), value)
        return value

    def changed(self):
        """Announce a committed change of users or revocations to every worker."""
        self._entries.clear()
        if self.source is not None:
            self.source.bump()


def principals():
    return context.app().extensions["mlapi.principals"]


def _generation_source(app):
    redis = app.extensions.get("mlapi.redis")
    if redis is not None:
        key = app.config["REDIS_KEY_PREFIX"] + "identity-generation"
        return RedisGeneration(redis, app.extensions["mlapi.redis_breaker"], key)
    # The file's path, a relative one already under the instance folder; None in memory.
    database = app.extensions["mlapi.sql"]
    if database.dialect == "sqlite":
        return SQLiteGeneration(database.path)
    return None  # another database and no Redis: read SQL on every request, as before


def init_app(app):
    app.extensions["mlapi.principals"] = Principals(
        _generation_source(app), wait=float(app.config["DATABASE_TIMEOUT"])
    )
