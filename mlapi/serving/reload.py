"""Hot reload: rebuild the registry's snapshot when the repository or the control state changes.

Each gunicorn worker polls on a daemon thread of its own (started after the fork),
so the request path pays nothing. Administrators' load and unload requests change a
small control document, ``{"generation": n, "unloaded": [names]}``, that every worker
polls with the repository and applies, so a request to one worker reaches all:

- :class:`FileControl` keeps it in a file beside the instance's other state: the
  workers of one host (or hosts sharing that folder) see it;
- :class:`RedisControl` keeps it in one Redis key, when MLAPI_REDIS_URL is set: every
  host sharing that Redis sees it within one poll interval, at the cost of one GET per
  poll per worker.
"""

import json
import logging
import os
import threading
import time

from mlapi.serving import repository
from mlapi.serving.errors import ServingError
from mlapi.serving.loader import build

log = logging.getLogger(__name__)


class ControlUnavailable(ServingError):
    """The shared control state cannot be read or written (Redis is down)."""


def _document(raw, where):
    """(generation, unloaded names) of a control document's JSON text."""
    document = json.loads(raw)
    if not isinstance(document, dict) or not isinstance(document.get("unloaded", []), list):
        raise ValueError(f"{where} is not a control document")
    return document.get("generation"), frozenset(str(n) for n in document.get("unloaded", ()))


def _encode(generation, unloaded):
    return json.dumps({"generation": generation, "unloaded": sorted(unloaded)})


class FileControl:
    """The control document in a file (written atomically, under an flock)."""

    def __init__(self, path):
        self.path = path

    def read(self):
        """(state for the fingerprint, the names unloaded); (None, {}) without the file."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                stat = os.fstat(handle.fileno())
                generation, unloaded = _document(handle.read(), self.path)
        except FileNotFoundError:
            return None, frozenset()
        except (OSError, ValueError, TypeError) as exc:
            log.warning("model control file %s unreadable, ignored: %s", self.path, exc)
            return None, frozenset()
        return (stat.st_mtime_ns, stat.st_ino, generation), unloaded

    def update(self, change):
        """Apply ``change(unloaded set)`` and bump the generation."""
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.path, encoding="utf-8") as handle:
                    generation, unloaded = _document(handle.read(), self.path)
            except (OSError, ValueError, TypeError):
                generation, unloaded = 0, frozenset()
            unloaded = set(unloaded)
            change(unloaded)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(_encode(int(generation or 0) + 1, unloaded))
            os.replace(tmp, self.path)


class RedisControl:
    """The control document in one Redis key, shared by every host that uses the Redis.

    ``client`` is a redis-py client. Reading is one GET; an update is an optimistic
    transaction (WATCH, GET, MULTI/SET), retried if another host changed the key
    meanwhile. Redis errors are :class:`ControlUnavailable`.
    """

    def __init__(self, client, key):
        self.client = client
        self.key = key

    def read(self):
        """(generation, the names unloaded); (None, {}) while no one has changed them."""
        try:
            raw = self.client.get(self.key)
        except Exception as exc:  # redis-py's errors, and the socket's
            raise ControlUnavailable(f"Redis is unavailable: {type(exc).__name__}") from None
        if raw is None:
            return None, frozenset()
        try:
            return _document(raw, f"Redis key {self.key}")
        except (ValueError, TypeError) as exc:
            log.warning("model control key %s unreadable, ignored: %s", self.key, exc)
            return None, frozenset()

    def update(self, change):
        """Apply ``change(unloaded set)`` and bump the generation, atomically across hosts."""

        def apply(pipe):
            raw = pipe.get(self.key)
            try:
                generation, unloaded = _document(raw, self.key) if raw else (0, frozenset())
            except (ValueError, TypeError):
                generation, unloaded = 0, frozenset()
            unloaded = set(unloaded)
            change(unloaded)
            pipe.multi()
            pipe.set(self.key, _encode(int(generation or 0) + 1, unloaded))

        try:
            self.client.transaction(apply, self.key)
        except Exception as exc:  # redis-py's errors, and the socket's
            raise ControlUnavailable(f"Redis is unavailable: {type(exc).__name__}") from None


class Reloader:
    def __init__(self, registry, directory, settings, control=None):
        """``control`` is a :class:`FileControl` or :class:`RedisControl`, or None."""
        self.registry = registry
        self.directory = directory
        self.settings = settings
        self.control = control
        self._lock = threading.Lock()
        self._thread = None
        self._control_down = False

    def _control(self):
        return self.control.read() if self.control else (None, frozenset())

    def _update(self, change):
        if self.control:
            self.control.update(change)

    # --- reloading --------------------------------------------------------------------

    def reload(self, use_control=True):
        """Build a new snapshot from the repository now and serve it; return it.

        ControlUnavailable if the control state cannot be read; ``use_control=False``
        builds without it (nothing unloaded), as at a start while Redis is down.
        """
        with self._lock:
            control, unloaded = self._control() if use_control else (None, frozenset())
            previous = self.registry.snapshot
            snapshot = build(self.directory, self.settings, previous, unloaded, control)
            self.registry.swap(snapshot)
        _log_changes(previous, snapshot)
        return snapshot

    def changed(self):
        """Whether the repository or the control state differ from the served snapshot."""
        if not self.directory:
            return False
        current = (repository.fingerprint(self.directory), self._control()[0])
        return current != self.registry.snapshot.fingerprint

    def poll(self):
        """Reload if anything changed; errors are logged, the served snapshot stays."""
        try:
            if self.changed():
                self.reload()
            self._control_down = False
        except ControlUnavailable as exc:
            if not self._control_down:  # once per outage, not once per poll
                log.warning("model control state unavailable (%s); serving the models loaded", exc)
            self._control_down = True
        except Exception:
            log.exception("model repository poll failed; serving the models already loaded")

    def index(self):
        """Rescan the repository on every worker (each sees the control state change)."""
        self._update(lambda unloaded: None)
        return self.reload()

    def load(self, name):
        """Serve model ``name`` again (clearing an unload) on every worker; the new snapshot."""
        self._update(lambda unloaded: unloaded.discard(name))
        return self.reload()

    def unload(self, name):
        """Stop serving model ``name`` on every worker until it is loaded again."""
        self._update(lambda unloaded: unloaded.add(name))
        return self.reload()

    def start(self, seconds):
        """Poll every ``seconds`` on a daemon thread (once per process; 0 or less: never)."""
        if seconds <= 0 or not self.directory or self._thread is not None:
            return

        def loop():
            while True:
                time.sleep(seconds)
                self.poll()

        self._thread = threading.Thread(target=loop, name="model-poll", daemon=True)
        self._thread.start()


def _log_changes(before, after):
    old = {(m.name, m.version) for versions in before.models.values() for m in versions.values()}
    new = {(m.name, m.version) for versions in after.models.values() for m in versions.values()}
    for name, version in sorted(new - old):
        log.info("model %s:%s loaded", name, version)
    for name, version in sorted(old - new):
        log.info("model %s:%s unloaded", name, version)
