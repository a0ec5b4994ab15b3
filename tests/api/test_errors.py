"""One error shape: every error is RFC 9457 problem+json, and no traceback leaks."""

import pytest

from tests.helpers import assert_problem


def test_unknown_route_is_a_404_problem(client):
    """Routing errors are problems too, not Flask's HTML page."""
    body = assert_problem(client.get("/no/such/thing"), 404)
    assert body["type"] == "about:blank"
    assert body["title"] == "Not Found"


def test_wrong_method_is_a_405_problem_with_allow(client):
    """A 405 keeps its Allow header."""
    response = client.get("/predict")
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_unexpected_exception_is_a_500_without_traceback(make_app):
    """A crash inside a view is a generic 500 problem; details stay in the logs."""
    app = make_app(TESTING=False, PROPAGATE_EXCEPTIONS=False)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internal detail")

    response = app.test_client().get("/boom")
    body = assert_problem(response, 500)
    assert "secret internal detail" not in response.get_data(as_text=True)
    assert "logged" in body["detail"]


@pytest.mark.parametrize("path", ["/predict", "/users/me"])
def test_auth_errors_are_problems_with_challenge(client, path):
    """Missing-token errors from the JWT extension are 401 problems with a Bearer challenge."""
    response = client.post(path) if path == "/predict" else client.get(path)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_database_down_makes_login_503_fast(app_without_database):
    """A database that cannot be reached makes /token answer 503, never 401, never a token."""
    import time

    app = app_without_database
    started = time.monotonic()
    response = app.test_client().post("/token", data={"username": "a", "password": "b" * 8})
    assert time.monotonic() - started < 2
    body = assert_problem(response, 503)
    assert "access_token" not in response.get_data(as_text=True)
    assert response.headers["Retry-After"] == "1"
    assert "database" in body["detail"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_locked_database_makes_login_503_not_401(app, client, make_user, backend):
    """With the users table locked by another transaction, /token answers 503 within seconds."""
    import time

    import sqlalchemy as sa

    make_user("alice")
    engine = sa.create_engine(app.config["DATABASE_URI"])
    with engine.connect() as conn:
        if backend == "sqlite":
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
        else:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = client.post(
            "/token", data={"username": "alice", "password": "correct-horse-battery"}
        )
        elapsed = time.monotonic() - started
        conn.exec_driver_sql("ROLLBACK")
    engine.dispose()
    assert_problem(response, 503)
    assert elapsed < 4
    assert "access_token" not in response.get_data(as_text=True)


def test_an_unknown_model_outside_the_inference_routes_is_a_404_problem(app):
    """The serving layer's ModelNotFound is mapped to a problem, never a 500."""
    from mlapi.serving.errors import ModelNotFound

    @app.get("/test-unknown-model")
    def unknown_model():
        raise ModelNotFound("nope")

    body = assert_problem(app.test_client().get("/test-unknown-model"), 404)
    assert "nope" in body["detail"]
