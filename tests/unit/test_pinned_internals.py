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
