"""Per request: the request id, the X-Process-Time header, and the request's metrics.

They are kept by :class:`RequestObserver`, a WSGI middleware around the Flask app: it
sees every request, including the ones Flask answers with an error, and adds its two
headers to the header list as the response starts, without Flask's hooks and header
objects. As Flask's response starts, it also names the matched route (a bounded label)
in the WSGI environ, where its metrics and gunicorn's access line read it.
"""

import re
import time

from flask import current_app, has_request_context, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from mlapi import context
from mlapi.ids import unique_id
from mlapi.observability.metrics import (
    IN_FLIGHT,
    RATE_LIMITED,
    REQUEST_LATENCY,
    REQUESTS,
    bound_children,
)

UNMATCHED = "<unmatched>"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
EXPORTER_ENDPOINT = "prometheus_metrics"
# Where the WSGI environ carries what the middleware, the logs and the access line read.
ROUTE = "mlapi.route"
ID = "mlapi.request_id"
# Headers a view asks the middleware to add (a list of (name, value)).
EXTRA_HEADERS = "mlapi.response_headers"


def route():
    """The matched route template, never the raw path (bounded label values)."""
    req = context.current_request()
    rule = req.url_rule
    if rule is not None:
        return rule.rule
    if isinstance(req.routing_exception, MethodNotAllowed):
        return allowing_route(req.routing_exception)
    return UNMATCHED


def allowing_route(exc):
    """For a 405: the template of the route the path matched with another method."""
    cached = request.environ.get("mlapi.allowing_route")
    if cached is None:
        cached = UNMATCHED
        adapter = current_app.create_url_adapter(request)
        for method in exc.valid_methods or ():
            try:
                rule, _args = adapter.match(method=method, return_rule=True)
            except HTTPException:
                continue
            cached = rule.rule
            break
        request.environ["mlapi.allowing_route"] = cached
    return cached


class RequestObserver:
    """WSGI middleware: request id, X-Process-Time and request metrics for every request."""

    def __init__(self, wsgi_app, uncounted=()):
        self.wsgi_app = wsgi_app
        # The exporter's own paths: a scrape is neither counted nor in flight.
        self.uncounted = frozenset(uncounted)
        self._requests = bound_children(REQUESTS)
        self._latency = bound_children(REQUEST_LATENCY)
        self._rate_limited = bound_children(RATE_LIMITED)

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        counted = environ.get("PATH_INFO") not in self.uncounted
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        rid = incoming if REQUEST_ID.match(incoming) else unique_id()
        environ[ID] = rid

        def start(status, headers, exc_info=None):
            elapsed = time.perf_counter() - started
            if ROUTE not in environ and has_request_context():  # Flask's response
                environ[ROUTE] = route()
            headers.append(("X-Request-ID", rid))
            headers.append(("X-Process-Time", f"{elapsed:.6f}"))
            headers.extend(environ.get(EXTRA_HEADERS, ()))
            if counted:
                self.count(environ, int(status[:3]), elapsed)
            return start_response(status, headers, exc_info)

        if not counted:
            return self.wsgi_app(environ, start)
        IN_FLIGHT.inc()
        try:
            return self.wsgi_app(environ, start)
        finally:
            IN_FLIGHT.dec()

    def count(self, environ, status, elapsed):
        method = environ.get("REQUEST_METHOD", "")
        if method not in KNOWN_METHODS:
            method = "OTHER"
        endpoint = environ.get(ROUTE, UNMATCHED)
        self._requests(method, endpoint, str(status)).inc()
        self._latency(method, endpoint).observe(elapsed)
        if status == 429:
            self._rate_limited(endpoint).inc()


def init_app(app):
    exporter = [rule.rule for rule in app.url_map.iter_rules(EXPORTER_ENDPOINT)]
    app.wsgi_app = RequestObserver(app.wsgi_app, uncounted=exporter)
