"""Request hooks: the request id, the X-Process-Time header, and each request's metrics."""

import re
import time
import uuid

from flask import g, request

from mlapi.observability.metrics import IN_FLIGHT, RATE_LIMITED, REQUEST_LATENCY, REQUESTS

UNMATCHED = "<unmatched>"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
EXPORTER_ENDPOINT = "prometheus_metrics"


def route():
    """The matched route template, never the raw path (bounded label values)."""
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def start_request():
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request.environ["mlapi.request_id"] = g.request_id
    if request.endpoint != EXPORTER_ENDPOINT:
        IN_FLIGHT.inc()
        g.in_flight = True


def finish_request(response):
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    response.headers["X-Request-ID"] = g.get("request_id", "")
    response.headers["X-Process-Time"] = f"{elapsed:.6f}"
    endpoint = route()
    request.environ["mlapi.route"] = endpoint
    if request.endpoint != EXPORTER_ENDPOINT and not g.get("counted"):
        g.counted = True
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        requests, latency = children(method, endpoint, response.status_code)
        requests.inc()
        latency.observe(elapsed)
        if response.status_code == 429:
            RATE_LIMITED.labels(endpoint).inc()
    return response


_children = {}


def children(method, endpoint, status):
    """The request counter's and latency histogram's children for these labels, bound
    once per worker (``labels()`` validates and locks on every call)."""
    key = (method, endpoint, status)
    found = _children.get(key)
    if found is None:
        found = (
            REQUESTS.labels(method, endpoint, str(status)),
            REQUEST_LATENCY.labels(method, endpoint),
        )
        _children[key] = found
    return found


def end_request(_exc):
    if g.pop("in_flight", False):
        IN_FLIGHT.dec()


def init_app(app):
    # First, so the id and clock exist before the limiter and JWT hooks run.
    app.before_request_funcs.setdefault(None, []).insert(0, start_request)
    app.after_request(finish_request)
    app.teardown_request(end_request)
