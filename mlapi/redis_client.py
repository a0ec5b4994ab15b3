"""The shared Redis connection (only when MLAPI_REDIS_URL is set), with a circuit breaker.

After a Redis call fails, callers skip Redis for ``REDIS_RETRY_SECONDS`` and use
their fallback (no cache, no active-user update), so an unreachable or paused Redis costs a
request at most one socket timeout instead of one per call.

Every Redis client of the app (this one, the limiter's, the cache's) is built with
``config.redis_client_options``: a deadline on every socket call and no retries but one
for a broken connection.
"""

import logging
import time

from config import import_redis, redis_client_options

log = logging.getLogger(__name__)


class Breaker:
    def __init__(self, cooldown):
        self.cooldown = cooldown
        self._open_until = 0.0

    @property
    def closed(self):
        """True when Redis may be tried."""
        return time.monotonic() >= self._open_until

    def trip(self):
        if self.closed:
            log.warning("Redis call failed; using fallbacks for %.1fs", self.cooldown)
        self._open_until = time.monotonic() + self.cooldown

    def call(self, fn, *args, **kwargs):
        """Run a Redis call; raise ConnectionError without trying while the breaker is open."""
        if not self.closed:
            raise ConnectionError("Redis skipped after a recent failure")
        try:
            return fn(*args, **kwargs)
        except Exception:
            self.trip()
            raise


def init_app(app):
    url = app.config.get("REDIS_URL")
    if not url:
        return
    # Imported only with Redis configured: the embedded mode does without it.
    redis = import_redis()
    app.extensions["mlapi.redis"] = redis.Redis.from_url(
        url, health_check_interval=30, **redis_client_options(app.config)
    )
    app.extensions["mlapi.redis_breaker"] = Breaker(app.config["REDIS_RETRY_SECONDS"])
    # One connection pool per worker: flask-limiter's storage uses this client's pool.
    options = app.config.get("RATELIMIT_STORAGE_OPTIONS")
    if options is not None and app.config.get("RATELIMIT_STORAGE_URI") == url:
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {
            **options,
            "connection_pool": app.extensions["mlapi.redis"].connection_pool,
        }
