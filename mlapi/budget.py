"""The per-user prediction budget (MLAPI_PREDICT_RATE_LIMIT), in one Redis round trip.

Every authenticated prediction request asks Redis one thing, with one Lua script
(loaded once, called by its SHA): is the worker's cached view of users and
revocations still current (mlapi/identity.py); if so, take the request's cost from
the user's moving window; what is left and when it resets (for the headers); and,
on /predict-cached, the cached prediction. If another process changed users or
revocations, the script spends nothing and returns the new generation: the worker
reads the user from SQL, answers 401 if the token is no longer accepted, and only
then spends (a second trip, only after a change).

flask-limiter checks every other limit. This one is run here because flask-limiter
needs two round trips for it (the hit, then a second script for the headers' reset
time) and cannot carry the identity check and the cache read. It keeps the same key
and list layout as the ``limits`` library's moving window, so both count alike, and
takes the time from the Redis server, so hosts with skewed clocks agree. Without
Redis, or while Redis fails, it counts with ``limits`` in process memory, as
flask-limiter's fallback does.
"""

import logging
import math
import threading
import time
from collections import deque

from flask import g
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from mlapi import context, identity
from mlapi.auth import current_identity
from mlapi.extensions import limiter
from mlapi.ids import unique_id
from mlapi.observability.hooks import EXTRA_HEADERS

try:  # a small C extension; redis-py itself is imported only with Redis configured
    from hiredis import pack_command
except ImportError:
    pack_command = None

log = logging.getLogger(__name__)

SCOPE = "predictions"

# KEYS: the window list, the generation, the cached prediction, the active users' set
#       (the last two only read or written when ARGV[5] / ARGV[6] ask).
# ARGV: the generation the worker relies on ('' when it read SQL on this request),
#       the limit's amount, its window in seconds, the request's cost, '1' to read the
#       cached prediction, the user name to record as active ('' for none), and a fresh
#       random generation to start with when none is set (first start, or Redis lost it).
# Returns {-1, generation} when the generation differs (nothing spent), else
# {accepted 1/0, generation, oldest entry in the window, entries in it, now, cached value}.
SCRIPT = """
local generation = redis.call('GET', KEYS[2])
if not generation then
    generation = ARGV[7]
    redis.call('SET', KEYS[2], generation)
end
if ARGV[1] ~= '' and generation ~= ARGV[1] then
    return {-1, generation}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local limit = tonumber(ARGV[2])
local expiry = tonumber(ARGV[3])
local amount = tonumber(ARGV[4])
local accepted = 0
if amount <= limit then
    local entry = redis.call('LINDEX', KEYS[1], limit - amount)
    if not (entry and tonumber(entry) >= now - expiry) then
        local entries = {}
        for i = 1, amount do
            entries[i] = now
        end
        for i = 1, #entries, 5000 do
            redis.call('LPUSH', KEYS[1], unpack(entries, i, math.min(i + 4999, #entries)))
        end
        redis.call('LTRIM', KEYS[1], 0, limit - 1)
        redis.call('EXPIRE', KEYS[1], expiry)
        accepted = 1
    end
end
-- Entries older than the window count for nothing: drop them from the tail (the oldest
-- end), where each request finds the few that expired since the last one, so the list
-- keeps the window alone and its length is the count. After a long idle, more than 64
-- have expired: the oldest live entry is found by binary search (limits'
-- moving_window.lua) and the rest trimmed at once.
local floor = now - expiry
local length = redis.call('LLEN', KEYS[1])
local popped = 0
while length > 0 and tonumber(redis.call('LINDEX', KEYS[1], -1)) < floor do
    if popped == 64 then
        local low, high, found = 0, length - 1, -1
        while low <= high do
            local mid = math.floor((low + high) / 2)
            if tonumber(redis.call('LINDEX', KEYS[1], mid)) >= floor then
                found = mid
                low = mid + 1
            else
                high = mid - 1
            end
        end
        if found < 0 then
            redis.call('DEL', KEYS[1])
        else
            redis.call('LTRIM', KEYS[1], 0, found)
        end
        length = found + 1
        break
    end
    redis.call('RPOP', KEYS[1])
    length = length - 1
    popped = popped + 1
end
local oldest, count = now, 0
if length > 0 then
    oldest = tonumber(redis.call('LINDEX', KEYS[1], -1))
    count = length
end
local cached = false
if accepted == 1 and ARGV[5] == '1' then
    cached = redis.call('GET', KEYS[3])
end
if ARGV[6] ~= '' then
    redis.call('ZADD', KEYS[4], now, ARGV[6])
end
return {accepted, generation, tostring(oldest), count, tostring(now), cached}
"""


class Window:
    """What the response headers say about the budget after this request."""

    def __init__(self, item, accepted, remaining, window_end, now):
        self.item = item
        self.accepted = accepted
        self.remaining = max(0, remaining)
        self.reset_at = int(window_end + 1)  # as flask-limiter's RequestLimit.reset_at
        self.now = now

    def headers(self):
        window = self.item.get_expiry()
        reset = max(0, math.ceil(self.reset_at - self.now))
        headers = [
            ("X-RateLimit-Limit", str(self.item.amount)),
            ("X-RateLimit-Remaining", str(self.remaining)),
            ("X-RateLimit-Reset", str(int(self.reset_at))),
            ("RateLimit-Policy", f'"default";q={self.item.amount};w={window}'),
            ("RateLimit", f'"default";r={self.remaining};t={reset}'),
        ]
        if not self.accepted:
            headers.append(("Retry-After", str(int(self.reset_at - self.now))))
        return headers


class MemoryWindows:
    """Exact moving windows in this process's memory: per key, the times of its hits,
    oldest first, under one lock.

    A hit drops the entries older than the window from the left and appends on the
    right: amortized O(1). limits' MemoryStorage keeps a window as a list it inserts
    into at the front (a copy of the whole window per hit) and expires it from a timer
    thread it starts again every 10 ms; with thousands of entries in a window, that
    cost more than the request. The rules are limits' moving window: an entry counts
    while it is at most ``expiry`` seconds old, and a request of ``cost`` is accepted
    when the window then holds at most ``limit - cost`` entries.
    """

    SWEEP_EVERY = 4096  # hits between two sweeps of keys whose every entry expired

    def __init__(self, clock=time.time):
        self.clock = clock
        self._windows = {}
        self._expiries = {}
        self._lock = threading.Lock()
        self._hits = 0

    def hit(self, key, limit, expiry, cost):
        """(accepted, entries now in the window, its oldest entry's time, now)."""
        with self._lock:
            now = self.clock()
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = deque()
            cutoff = now - expiry
            while window and window[0] < cutoff:
                window.popleft()
            accepted = len(window) + cost <= limit
            if accepted:
                window.extend([now] * cost)
            count = len(window)
            oldest = window[0] if window else now
            self._expiries[key] = expiry
            self._hits += 1
            if self._hits % self.SWEEP_EVERY == 0:
                self._sweep(now)
        return accepted, count, oldest, now

    def _sweep(self, now):
        """Forget the keys whose every entry is older than their own window."""
        for key, window in list(self._windows.items()):
            if not window or window[-1] < now - self._expiries[key]:
                del self._windows[key]
                del self._expiries[key]

    def __len__(self):
        return len(self._windows)


class Budget:
    """The per-user prediction budget of one app; one instance per worker."""

    def __init__(self, app):
        self.redis = app.extensions.get("mlapi.redis")
        self.breaker = app.extensions.get("mlapi.redis_breaker")
        self.generation_key = app.config["REDIS_KEY_PREFIX"] + "identity-generation"
        self.key_prefix = app.config.get("RATELIMIT_KEY_PREFIX", "")
        self.cache_prefix = app.config.get("CACHE_KEY_PREFIX", "")
        self.sha = None
        self._local = threading.local()  # each thread's connection for the script
        self._items = {}
        # Without Redis, or while it fails: this process's memory. With another store for
        # flask-limiter (RATELIMIT_STORAGE_URI), that store, so every limit counts there.
        self._memory = None
        self._windows = MemoryWindows()

    def item(self):
        text = context.app().config["PREDICT_RATE_LIMIT"]
        if text not in self._items:
            self._items[text] = parse(text)
        return self._items[text]

    def elsewhere(self):
        """limits' moving window over flask-limiter's store, when that is shared storage
        other than mlapi's Redis (the app's, bound last); None when it is process memory."""
        storage = limiter.storage
        if isinstance(storage, MemoryStorage):
            return None
        if self._memory is None or self._memory.storage is not storage:
            self._memory = MovingWindowRateLimiter(storage)
        return self._memory

    def spend(self, cost, stamp, recheck, lookup=None, own_headers=True):
        """Take ``cost`` from the user's budget; raise 429 when it is spent.

        With ``own_headers`` (the view has no flask-limiter limit whose headers would
        win), an accepted request's headers go straight to the response's header list
        (mlapi/observability/hooks.py), without an after-request hook.

        ``stamp`` is the generation the request's user was served at (None if read from
        SQL on this request); ``recheck(generation)`` reads the user again and raises
        401 when the token is no longer accepted. With ``lookup`` (a
        :class:`mlapi.serving.cache.Lookup`), the cached value of its key is read in the
        same round trip into ``lookup.prefetched``.
        """
        item = self.item()
        args = [a for a in (self.key_prefix, f"user:{current_identity()}", SCOPE) if a]
        key = item.key_for(*args)
        # Redis only when flask-limiter counts there too (MLAPI_REDIS_URL, and no other
        # RATELIMIT_STORAGE_URI), so every limit is counted in one place.
        shared = self.redis is not None and hasattr(limiter.storage, "prefixed_key")
        window = None
        if shared and self.breaker.closed:
            import redis

            try:
                window = self._spend_in_redis(item, key, cost, stamp, recheck, lookup)
            except (redis.exceptions.RedisError, OSError):  # not the 401s it raises
                self.breaker.trip()
                log.warning("prediction budget counted in memory: Redis failed", exc_info=True)
        if window is None:
            if stamp is not None:
                recheck(None)  # the user came from the cache and Redis cannot vouch for it
            window = self._spend_in_memory(item, args, key, cost, shared)
        self._finish(window, own_headers)

    def _spend_in_redis(self, item, key, cost, stamp, recheck, lookup):
        # The storage's own prefix, so this list is the one limits' RedisStorage keeps.
        active = context.request_g().pop("active_user_write", None) or (self.generation_key, "")
        keys = [
            limiter.storage.prefixed_key(key),
            self.generation_key,
            self.cache_prefix + (lookup.key if lookup is not None else ""),
            active[0],
        ]
        argv = [stamp or "", item.amount, item.get_expiry(), cost]
        argv += ["1" if lookup is not None else "", active[1], unique_id()]
        result = self._run(keys, argv)
        if result[0] == -1:
            generation = result[1].decode() if result[1] else None
            recheck(generation)
            argv[0] = ""
            result = self._run(keys, argv)
        accepted, generation, oldest, count, now, cached = result
        if generation:
            identity.principals().observe(generation.decode())
        remaining = item.amount - int(count)
        end = float(oldest) + item.get_expiry()
        window = Window(item, bool(accepted), remaining, end, float(now))
        if lookup is not None:
            lookup.prefetched = cached or None
        return window

    def _run(self, keys, argv):
        import redis

        if self.sha is None:
            self.sha = self.redis.script_load(SCRIPT)
        try:
            return self._evalsha(keys, argv)
        except redis.exceptions.NoScriptError:  # Redis restarted or flushed its scripts
            self.sha = self.redis.script_load(SCRIPT)
            return self._evalsha(keys, argv)

    def _evalsha(self, keys, argv):
        """EVALSHA on this thread's own connection to the client's server, packed once.

        The same connection settings (timeouts, health checks) and the same retry (once,
        for a connection a Redis restart closed) as the client's own ``evalsha``, without
        its pool's work on every call: a lock, connection-count bookkeeping and a poll of
        the socket, which together cost more CPU than the round trip.
        """
        connection = getattr(self._local, "connection", None)
        if connection is None:
            pool = self.redis.connection_pool
            connection = pool.connection_class(**pool.connection_kwargs)
            self._local.connection = connection
        packed = _pack(connection, ("EVALSHA", self.sha, len(keys), *keys, *argv))

        def call():
            connection.send_packed_command(packed)
            return connection.read_response()

        return connection.retry.call_with_retry(call, lambda _error: connection.disconnect())

    def _spend_in_memory(self, item, args, key, cost, shared):
        strategy = None if shared else self.elsewhere()
        if strategy is not None:
            accepted = strategy.hit(item, *args, cost=cost)
            reset_at, remaining = strategy.get_window_stats(item, *args)
            return Window(item, accepted, remaining, reset_at, time.time())
        expiry = item.get_expiry()
        accepted, count, oldest, now = self._windows.hit(key, item.amount, expiry, cost)
        return Window(item, accepted, item.amount - count, oldest + expiry, now)

    def _finish(self, window, own_headers):
        if window.accepted and own_headers:
            context.current_request().environ[EXTRA_HEADERS] = window.headers()
            return
        g.prediction_budget = window
        if not window.accepted:
            raise TooManyRequests(str(window.item))


def _pack(connection, command):
    """The command in Redis's protocol: hiredis's packer on its own, without redis-py's
    checks of each argument around it (the same bytes), or redis-py's without hiredis."""
    if pack_command is None:
        return connection.pack_command(*command)
    return [pack_command(command)]


def budget():
    return context.app().extensions["mlapi.budget"]


def add_headers(response):
    """The budget's headers, unless a flask-limiter limit of the view set its own."""
    window = context.request_g().get("prediction_budget")
    if window is None:
        return response
    if window.accepted and limiter.current_limit is not None:
        return response
    if not window.accepted:
        limiter.context.view_rate_limit = None  # this 429 is the budget's, say so
    response.headers.update(dict(window.headers()))
    return response


def init_app(app):
    app.extensions["mlapi.budget"] = Budget(app)
    # Registered after flask-limiter's header hook, so it runs before it.
    app.after_request(add_headers)
