"""Active users: who made an authenticated request in the last window."""

import logging
import time


class ActiveUsers:
    """Who made an authenticated request recently: a Redis sorted set shared by every
    worker and host, or a dict in the embedded single-process mode.

    Each process writes a user's timestamp at most every ``refresh`` seconds, so the
    bookkeeping costs one Redis round trip per user per interval, not per request.
    """

    def __init__(self, window, redis=None, breaker=None, key="active_users", refresh=10.0):
        self.window = window
        self.redis = redis
        self.breaker = breaker
        self.key = key
        self.refresh = refresh
        self._seen = {}

    def touch(self, username, deferred=False):
        """Record activity. With ``deferred``, a due Redis write is not sent but returned
        as (key, username), for the caller to send in a round trip it makes anyway."""
        now = time.time()
        if now - self._seen.get(username, 0.0) < self.refresh:
            return None
        self._seen[username] = now
        if self.redis is not None and deferred:
            return self.key, username
        if self.redis is not None:
            try:
                self.breaker.call(self.redis.zadd, self.key, {username: now})
            except Exception:
                logging.getLogger(__name__).debug("could not record activity", exc_info=True)

    def count(self):
        cutoff = time.time() - self.window
        if self.redis is None:
            return sum(1 for seen in list(self._seen.values()) if seen >= cutoff)
        self.redis.zremrangebyscore(self.key, "-inf", cutoff)
        return self.redis.zcard(self.key)
