"""CORS: off by default; an allow-list of origins (MLAPI_CORS_ORIGINS) answered by real
preflight requests, with problem responses carrying the same headers."""

import pytest

from config import ConfigurationError, check_value
from tests.helpers import assert_problem

APP_ORIGIN = "https://app.example.com"


def preflight(
    client, origin, method="POST", headers="authorization, content-type", path="/predict"
):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


@pytest.fixture
def cors_client(make_app):
    return make_app(CORS_ORIGINS=[APP_ORIGIN, "http://localhost:3000"]).test_client()


def test_cors_is_off_by_default(client, auth):
    """Without MLAPI_CORS_ORIGINS no response carries an Access-Control header."""
    for response in (
        preflight(client, APP_ORIGIN),
        client.post("/predict", json=[1, 2], headers={**auth, "Origin": APP_ORIGIN}),
    ):
        assert not [k for k, _ in response.headers if k.lower().startswith("access-control")]


def test_preflight_from_an_allowed_origin_is_answered(cors_client):
    response = preflight(cors_client, APP_ORIGIN)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Origin" in response.headers["Vary"]


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "https://app.example.com.evil.io",
        "http://app.example.com",
        "null",
    ],
)
def test_origins_not_on_the_list_get_no_allow_origin(cors_client, origin):
    assert "Access-Control-Allow-Origin" not in preflight(cors_client, origin).headers
    response = cors_client.get("/users/me", headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_actual_request_exposes_rate_limit_and_request_id(make_app):
    app = make_app(CORS_ORIGINS=[APP_ORIGIN])
    client = app.test_client()
    from mlapi import users

    with app.app_context():
        users.create("alice", "correct-horse-battery")
    token = client.post("/token", data={"username": "alice", "password": "correct-horse-battery"})
    headers = {"Authorization": f"Bearer {token.get_json()['access_token']}", "Origin": APP_ORIGIN}
    response = client.post("/predict", json=[1, 2, 3], headers=headers)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    exposed = {
        h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert {"ratelimit", "ratelimit-policy", "x-request-id", "retry-after"} <= exposed
    assert "RateLimit" in response.headers and "X-Request-ID" in response.headers


def test_problem_responses_carry_cors_headers(cors_client):
    """A 401 problem is readable by the allowed page (so it can show the detail)."""
    response = cors_client.get("/users/me", headers={"Origin": APP_ORIGIN})
    assert_problem(response, 401)
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "www-authenticate" in response.headers["Access-Control-Expose-Headers"].lower()


def test_request_without_origin_gets_no_cors_headers(cors_client):
    """A same-origin or non-browser request is not told the allow-list."""
    response = cors_client.get("/health/live")
    assert "Access-Control-Allow-Origin" not in response.headers


def test_origins_setting_accepts_a_comma_separated_string(make_app):
    client = make_app(CORS_ORIGINS=f"{APP_ORIGIN}, http://localhost:3000/").test_client()
    for origin in (APP_ORIGIN, "http://localhost:3000"):
        assert preflight(client, origin).headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/path", "ftp://x.io"])
def test_malformed_origins_are_refused_at_start(bad, make_app):
    """(tests/system/test_settings.py starts gunicorn and the CLI with one.)"""
    with pytest.raises(ConfigurationError, match="MLAPI_CORS_ORIGINS") as error:
        check_value("CORS_ORIGINS", [bad])
    assert error.value.setting == "MLAPI_CORS_ORIGINS"
    assert "is not an origin" in str(error.value)
    with pytest.raises(ConfigurationError, match="MLAPI_CORS_ORIGINS"):
        make_app(CORS_ORIGINS=f"https://ok.example.com,{bad}")


def test_origins_setting_from_the_environment(monkeypatch, tmp_path):
    """MLAPI_CORS_ORIGINS as an operator sets it: a JSON list in the environment."""
    from mlapi import create_app
    from mlapi.extensions import db

    monkeypatch.setenv("MLAPI_CORS_ORIGINS", f'["{APP_ORIGIN}"]')
    app = create_app(
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'cors.db'}", "SECRET_KEY": "k" * 40},
        instance_path=tmp_path / "instance",
    )
    try:
        response = preflight(app.test_client(), APP_ORIGIN)
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    finally:
        with app.app_context():
            db.dispose()


def test_rate_limited_answer_is_readable_by_the_page(make_app):
    """A 429 from the login limit carries the CORS headers, so the page can read Retry-After."""
    client = make_app(CORS_ORIGINS=[APP_ORIGIN], LOGIN_RATE_LIMIT="1/minute").test_client()
    form = {"username": "alice", "password": "wrong-guess"}
    headers = {"Origin": APP_ORIGIN}
    assert client.post("/token", data=form, headers=headers).status_code == 401
    limited = client.post("/token", data=form, headers=headers)
    assert_problem(limited, 429)
    assert limited.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "retry-after" in limited.headers["Access-Control-Expose-Headers"].lower()
    assert int(limited.headers["Retry-After"]) > 0
