"""The shared Redis connection (only when MLAPI_REDIS_URL is set), with a circuit breaker.

After a Redis call fails, callers skip Redis for ``REDIS_RETRY_SECONDS`` and use
their fallback (no cache, no active-user update), so an unreachable or paused Redis costs a
request at most one socket timeout instead of one per call.
"""

import logging
import time

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
    import redis  # only with Redis configured: the embedded mode does without it

    timeout = app.config["REDIS_SOCKET_TIMEOUT"]
    app.extensions["mlapi.redis"] = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    app.extensions["mlapi.redis_breaker"] = Breaker(app.config["REDIS_RETRY_SECONDS"])
    # One connection pool per worker: flask-limiter's storage uses this client's pool.
    options = app.config.get("RATELIMIT_STORAGE_OPTIONS")
    if options is not None and app.config.get("RATELIMIT_STORAGE_URI") == url:
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {
            **options,
            "connection_pool": app.extensions["mlapi.redis"].connection_pool,
        }
