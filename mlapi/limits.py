"""Rate limiting: keys, configured limits, and the response headers clients read.

Limits are flask-limiter's. Storage is Redis when MLAPI_REDIS_URL is set, so
every worker and host counts together; otherwise it is in-process memory,
which is exact only because the embedded mode runs a single worker process.
"""

import logging
import math
import time

from flask import current_app, g, request
from flask.globals import request_ctx
from limits import parse
from werkzeug.middleware.proxy_fix import ProxyFix

from mlapi import context
from mlapi.auth import current_identity
from mlapi.extensions import limiter

log = logging.getLogger(__name__)


def by_address():
    """The connecting address (ProxyFix rewrites it when proxies are trusted)."""
    return f"addr:{request.remote_addr}"


def by_user():
    """The authenticated user; views put ``@token_required`` (mlapi.auth) above their limits."""
    return f"user:{current_identity()}"


def config_limit(key):
    """A limit read from the app config at request time, so every limit is configurable."""
    return lambda: current_app.config[key]


def remaining(key):
    """Requests left in the current window of the limit configured under ``key``."""
    wanted = parse(current_app.config[key])
    for lim in limiter.current_limits:
        if lim.limit == wanted and not lim.shared:
            return lim.remaining
    return 0


def strip_retry_after(response):
    """flask-limiter sets Retry-After on every limited response; only a 429's is the limiter's.

    Other errors (a 503 from a database outage) keep the value they were raised with.
    """
    if response.status_code != 429:
        response.headers.pop("Retry-After", None)
        if g.get("retry_after"):
            response.headers["Retry-After"] = str(g.retry_after)
    return response


def add_ietf_headers(response):
    """Mirror the limit in the IETF draft's ``RateLimit-Policy`` and ``RateLimit`` headers.

    Reading the window is a storage round trip: when Redis fails between the limit's hit
    and this hook, the response goes out without these headers (flask-limiter's own hook,
    next, falls back to memory), never as an error.
    """
    current = limiter.current_limit
    if current is None:
        return response
    window = current.limit.get_expiry()
    try:
        reset = max(0, math.ceil(current.reset_at - time.time()))
    except Exception:
        log.warning("rate limit storage unavailable; response sent without RateLimit headers")
        return response
    name = "default"
    response.headers["RateLimit-Policy"] = f'"{name}";q={current.limit.amount};w={window}'
    response.headers["RateLimit"] = f'"{name}";r={current.remaining};t={reset}'
    return response


def limiter_ran():
    """Whether a flask-limiter limit was looked at in this request (it keeps its state on
    the request context, made on first use: flask-limiter 4.1's private name, pinned)."""
    return "_limiter_request_context" in vars(request_ctx._get_current_object())


class LimiterHooks:
    """flask-limiter's response and teardown hooks, run only in requests where one of its
    limits ran: most requests (every prediction, under the budget) meet none."""

    def __init__(self, app):
        self.inject = _take(app.after_request_funcs[None], "__inject_headers")
        self.release = _take(app.teardown_request_funcs[None], "__release_context")
        app.after_request(self.after_request)
        app.teardown_request(self.teardown)

    def after_request(self, response):
        if limiter_ran():
            response = self.inject(add_ietf_headers(response))
        elif not context.request_g().get("retry_after"):
            return response
        return strip_retry_after(response)

    def teardown(self, exc):
        if limiter_ran():
            self.release(exc)


def _take(hooks, name):
    """Remove flask-limiter's hook ``name`` (a method, or a partial of one) from a hook
    list and return it."""
    for hook in hooks:
        if getattr(getattr(hook, "func", hook), "__name__", None) == name:
            hooks.remove(hook)
            return hook
    raise RuntimeError(f"flask-limiter 4.1 registered {name}; this version does not")


def init_app(app):
    config = app.config
    hops = int(config["TRUSTED_PROXIES"])
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    limiter.recheck_seconds = config["REDIS_RETRY_SECONDS"]
    limiter.init_app(app)
    LimiterHooks(app)
    if not (config.get("RATELIMIT_DEFAULT") or config.get("RATELIMIT_APPLICATION")):
        # Every mlapi limit is declared on its view and checked in the view's limiter
        # wrapper. flask-limiter's before-request pass exists for default and application
        # limits, which are not configured, so it would only cost each request (a fifth
        # of a health probe's time in the profile).
        app.before_request_funcs[None].remove(limiter._check_request_limit)
