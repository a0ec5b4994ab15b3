"""Unbound Flask extensions, bound to the app in ``create_app``; imports nothing from mlapi."""

import time

import flask_limiter
from flask import current_app
from flask_caching import Cache
from flask_jwt_extended import JWTManager
from flask_limiter.util import get_remote_address
from werkzeug.local import LocalProxy


class Limiter(flask_limiter.Limiter):
    """flask-limiter, re-checking a failed storage every ``recheck_seconds``.

    After its storage fails, flask-limiter 4.1 counts in memory (per worker) and re-checks
    the storage with an exponential back-off of up to 32 s, so limits stayed per-worker for
    half a minute after Redis was back. This overrides that private method (flask-limiter
    is pinned, and tests/unit/test_pinned_internals.py checks that the name still exists).
    """

    recheck_seconds = 2.0
    _last_recheck = 0.0

    def _Limiter__should_check_backend(self):
        now = time.monotonic()
        if now - self._last_recheck < self.recheck_seconds:
            return False
        self._last_recheck = now
        return True


def _database():
    return current_app.extensions["mlapi.sql"]


# The current app's mlapi.sql.Database (mlapi.database builds it): db.connect(),
# db.transaction(), db.dialect.
db = LocalProxy(_database)
jwt = JWTManager()
cache = Cache()
# Keys on the connecting address; ProxyFix rewrites it when proxies are trusted.
limiter = Limiter(key_func=get_remote_address)
