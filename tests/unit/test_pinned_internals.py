"""Private names of pinned libraries that mlapi relies on: a library upgrade that renames
one fails here, not silently in production."""

import inspect

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
