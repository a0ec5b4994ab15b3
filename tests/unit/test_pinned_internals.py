"""Private names of pinned libraries that mlapi relies on: a library upgrade that renames
one fails here, not silently in production."""

import inspect
import os
import threading

import flask_limiter
import psycopg

from mlapi.extensions import Limiter
from mlapi.postgres import DeadlineConnection


def test_flask_limiter_still_asks_should_check_backend():
    """mlapi.extensions.Limiter overrides flask-limiter's storage re-check back-off."""
    original = flask_limiter.Limiter._Limiter__should_check_backend
    assert Limiter._Limiter__should_check_backend is not original
    assert "__should_check_backend()" in inspect.getsource(flask_limiter.Limiter)


def test_limiter_rechecks_at_most_every_recheck_seconds(monkeypatch):
    limiter = Limiter(key_func=lambda: "k")
    clock = [100.0]
    monkeypatch.setattr("mlapi.extensions.time.monotonic", lambda: clock[0])
    assert limiter._Limiter__should_check_backend() is True
    clock[0] += 1.0
    assert limiter._Limiter__should_check_backend() is False
    clock[0] += 1.5
    assert limiter._Limiter__should_check_backend() is True


def test_psycopg_wait_takes_a_timeout_and_raises_wait_timeout():
    """mlapi.postgres.DeadlineConnection passes a timeout to Connection.wait and catches
    psycopg's private _WaitTimeout, an OperationalError."""
    assert "timeout" in inspect.signature(psycopg.Connection.wait).parameters
    assert issubclass(psycopg.errors._WaitTimeout, psycopg.OperationalError)
    assert DeadlineConnection.wait is not psycopg.Connection.wait


def test_flask_limiter_keeps_its_request_state_on_the_request_context():
    """mlapi.limits.limiter_ran() looks for the attribute flask-limiter 4.1 makes on first use."""
    from flask import Flask

    from mlapi import limits

    app = Flask(__name__)
    limiter = Limiter(key_func=lambda: "k", storage_uri="memory://")
    limiter.init_app(app)
    with app.test_request_context("/"):
        assert not limits.limiter_ran()
        limiter.context  # noqa: B018 (made on first use)
        assert limits.limiter_ran()


def test_flask_limiter_registers_the_hooks_mlapi_runs_only_when_it_ran():
    from flask import Flask

    from mlapi.limits import LimiterHooks

    app = Flask(__name__)
    Limiter(key_func=lambda: "k", storage_uri="memory://").init_app(app)
    hooks = LimiterHooks(app)
    assert hooks.inject.func.__qualname__ == "Limiter.__inject_headers"
    assert hooks.release.__qualname__ == "Limiter.__release_context"
    assert app.after_request_funcs[None] == [hooks.after_request]
    assert app.teardown_request_funcs[None] == [hooks.teardown]


FORKED_METRICS = """
import os, sys
from prometheus_client import Counter, values
from mlapi.observability import metrics

assert values.ValueClass is not None and metrics.REQUESTS.labels("GET", "/x", "200")._value.__class__ is values.ValueClass
counter = Counter("forked_total", "A counter written by two processes.")
counter.inc()
pid = os.fork()
if pid == 0:
    counter.inc(5)  # the child's own file, as a gunicorn worker's
    os._exit(0)
os.waitpid(pid, 0)
counter.inc()
print(os.getpid(), pid)
"""


def test_metrics_written_after_a_fork_go_to_the_childs_own_file(tmp_path):
    """mlapi.observability.metrics replaces prometheus_client.values.ValueClass (0.26) with
    MultiProcessValue(process_identifier=mlapi.ids.process_id): each process still writes
    its own file, a forked child included, and /metrics sums them."""
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", FORKED_METRICS], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    parent, child = done.stdout.split()
    assert {p.name for p in tmp_path.glob("counter_*.db")} == {
        f"counter_{parent}.db",
        f"counter_{child}.db",
    }
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("forked_total") == 7.0


def test_thread_pool_keeps_its_waiting_work_in_a_queue_that_says_when_it_is_empty():
    """mlapi/worker.py's threads wait for their client's next request only while
    ``ThreadPoolExecutor._work_queue`` is empty (no request is waiting for a thread)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        assert pool._work_queue.empty()
        started = threading.Event()
        release = threading.Event()
        pool.submit(lambda: (started.set(), release.wait(5)))
        started.wait(5)
        pool.submit(lambda: None)
        assert not pool._work_queue.empty()
        release.set()
    finally:
        pool.shutdown(wait=True)


def test_flask_keeps_a_requests_own_body_limit_as_max_content_length(make_app):
    """mlapi.api.strict_json reads ``_max_content_length`` (a request's own limit) and
    falls back to the app's MAX_CONTENT_LENGTH, as Flask's property does."""
    app = make_app(MAX_CONTENT_LENGTH=1000)
    with app.test_request_context("/", method="POST", data=b"[1]"):
        from flask import request

        assert request._max_content_length is None and request.max_content_length == 1000
        request.max_content_length = 10
        assert request._max_content_length == 10 == request.max_content_length


def test_gunicorn_writes_the_date_header_with_util_http_date_read_at_each_response():
    """mlapi/worker.py replaces ``gunicorn.util.http_date`` in its workers with a value
    formatted once a second; gunicorn's response must look the function up each time."""
    import email.utils
    import time

    from gunicorn.http import wsgi

    from mlapi.worker import http_date_per_second

    source = inspect.getsource(wsgi.Response.default_headers)
    assert "util.http_date()" in source
    for _ in range(3):  # a second may turn between the two calls
        now = int(time.time())
        mine = http_date_per_second()
        if int(time.time()) == now:
            break
    assert mine == email.utils.formatdate(now, localtime=False, usegmt=True)
    assert http_date_per_second(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
