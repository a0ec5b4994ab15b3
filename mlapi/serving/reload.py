"""Hot reload: rebuild the registry's snapshot when the repository or the control file changes.

Each gunicorn worker polls on a daemon thread of its own (started after the fork),
so the request path pays nothing. Administrators' load and unload requests are
written to a small control file beside the instance's other state; every worker
polls it with the repository and applies it, so a request to one worker reaches all.
"""

import json
import logging
import os
import threading
import time

from mlapi.serving import repository
from mlapi.serving.loader import build

log = logging.getLogger(__name__)


class Reloader:
    def __init__(self, registry, directory, settings, control_path=None):
        self.registry = registry
        self.directory = directory
        self.settings = settings
        self.control_path = control_path
        self._lock = threading.Lock()
        self._thread = None

    # --- the control file: {"generation": n, "unloaded": [names]} ---------------------

    def _control(self):
        """(state of the control file for the fingerprint, the names unloaded)."""
        if not self.control_path:
            return None, frozenset()
        try:
            with open(self.control_path, encoding="utf-8") as handle:
                stat = os.fstat(handle.fileno())
                document = json.load(handle)
            unloaded = frozenset(str(name) for name in document.get("unloaded", ()))
        except FileNotFoundError:
            return None, frozenset()
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("model control file %s unreadable, ignored: %s", self.control_path, exc)
            return None, frozenset()
        return (stat.st_mtime_ns, stat.st_ino, document.get("generation")), unloaded

    def _write_control(self, change):
        """Apply ``change(unloaded set)`` to the control file and bump its generation."""
        import fcntl

        os.makedirs(os.path.dirname(self.control_path), exist_ok=True)
        with open(f"{self.control_path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.control_path, encoding="utf-8") as handle:
                    document = json.load(handle)
            except (OSError, ValueError):
                document = {}
            unloaded = set(document.get("unloaded", ()))
            change(unloaded)
            document = {
                "generation": int(document.get("generation", 0)) + 1,
                "unloaded": sorted(unloaded),
            }
            tmp = f"{self.control_path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
            os.replace(tmp, self.control_path)

    # --- reloading --------------------------------------------------------------------

    def reload(self):
        """Build a new snapshot from the repository now and serve it; return it."""
        with self._lock:
            control, unloaded = self._control()
            previous = self.registry.snapshot
            snapshot = build(self.directory, self.settings, previous, unloaded, control)
            self.registry.swap(snapshot)
        _log_changes(previous, snapshot)
        return snapshot

    def changed(self):
        """Whether the repository or the control file differ from the served snapshot."""
        if not self.directory:
            return False
        current = (repository.fingerprint(self.directory), self._control()[0])
        return current != self.registry.snapshot.fingerprint

    def poll(self):
        """Reload if anything changed; errors are logged, the served snapshot stays."""
        try:
            if self.changed():
                self.reload()
        except Exception:
            log.exception("model repository poll failed; serving the models already loaded")

    def index(self):
        """Rescan the repository on every worker (each sees the control file change)."""
        if self.control_path:
            self._write_control(lambda unloaded: None)
        return self.reload()

    def load(self, name):
        """Serve model ``name`` again (clearing an unload) on every worker; the new snapshot."""
        if self.control_path:
            self._write_control(lambda unloaded: unloaded.discard(name))
        return self.reload()

    def unload(self, name):
        """Stop serving model ``name`` on every worker until it is loaded again."""
        if self.control_path:
            self._write_control(lambda unloaded: unloaded.add(name))
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
