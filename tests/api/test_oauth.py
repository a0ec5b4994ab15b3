"""The token endpoint as OAuth2 defines it (RFC 6749 §4.3, §5.2, §6)."""

import time

import pytest

from tests.helpers import PASSWORD, assert_problem, write_user

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def token_request(client, **form):
    return client.post("/token", data=form)


def assert_oauth_error(response, status, error):
    """A problem that also carries RFC 6749 §5.2's error members; returns its body."""
    body = assert_problem(response, status)
    assert body["error"] == error
    assert body["error_description"] == body["detail"]
    return body


def login(client, username="alice", password=PASSWORD):
    response = token_request(client, grant_type="password", username=username, password=password)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# --- grants, in process ----------------------------------------------------------


def test_refresh_grant_rotates_tokens_within_the_session(client, make_user):
    """grant_type=refresh_token answers a new access token and a new refresh token."""
    make_user("alice")
    first = login(client)
    response = token_request(
        client, grant_type="refresh_token", refresh_token=first["refresh_token"]
    )
    body = response.get_json()
    assert response.status_code == 200, body
    assert response.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "bearer" and body["expires_in"] == 30 * 60
    assert body["access_token"] != first["access_token"]
    assert body["refresh_token"] and body["refresh_token"] != first["refresh_token"]
    me = client.get("/users/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.get_json()["username"] == "alice"
    again = token_request(client, grant_type="refresh_token", refresh_token=body["refresh_token"])
    assert again.status_code == 200


def test_logout_after_refresh_revokes_every_token_of_the_session(client, make_user):
    """Refreshing keeps the session id: a logout with the newest access token ends the
    original refresh token and the rotated one alike."""
    make_user("alice")
    first = login(client)
    rotated = token_request(
        client, grant_type="refresh_token", refresh_token=first["refresh_token"]
    ).get_json()
    assert client.post("/logout", headers=bearer(rotated["access_token"])).status_code == 200
    for refresh_token in (first["refresh_token"], rotated["refresh_token"]):
        response = token_request(client, grant_type="refresh_token", refresh_token=refresh_token)
        assert_oauth_error(response, 400, "invalid_grant")
    assert client.post("/token/refresh", headers=bearer(first["refresh_token"])).status_code == 401
    # Another session of the same user is untouched.
    assert login(client)["access_token"]


def test_bearer_refresh_endpoint_still_works(client, make_user):
    """/token/refresh with the refresh token as the bearer answers a new access token."""
    make_user("alice")
    refresh_token = login(client)["refresh_token"]
    response = client.post("/token/refresh", headers=bearer(refresh_token))
    assert response.status_code == 200
    assert set(response.get_json()) == {"access_token", "token_type", "expires_in"}


@pytest.mark.parametrize(
    "refresh_token",
    [
        "not-a-jwt",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",
    ],
)
def test_malformed_refresh_token_is_invalid_grant(client, make_user, refresh_token):
    make_user("alice")
    response = token_request(client, grant_type="refresh_token", refresh_token=refresh_token)
    body = assert_oauth_error(response, 400, "invalid_grant")
    assert "access_token" not in body


def test_access_token_is_not_a_refresh_token(client, make_user):
    """An access token sent as the refresh token is refused."""
    make_user("alice")
    access = login(client)["access_token"]
    response = token_request(client, grant_type="refresh_token", refresh_token=access)
    assert_oauth_error(response, 400, "invalid_grant")


def test_refresh_token_of_a_disabled_or_deleted_user_is_refused(app, client, make_user):
    from mlapi import users

    make_user("alice")
    make_user("bob")
    alice, bob = login(client, "alice"), login(client, "bob")
    write_user(app, "alice", disabled=True)
    with app.app_context():
        users.delete("bob")
    for tokens in (alice, bob):
        response = token_request(
            client, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
        )
        assert_oauth_error(response, 400, "invalid_grant")


def test_expired_refresh_token_is_invalid_grant(make_app, make_user):
    app = make_app(REFRESH_TOKEN_DAYS=1 / 86400)
    client = app.test_client()
    with app.app_context():
        from mlapi import users

        users.create("alice", PASSWORD)
    refresh_token = login(client)["refresh_token"]
    time.sleep(2.1)
    response = token_request(client, grant_type="refresh_token", refresh_token=refresh_token)
    assert_oauth_error(response, 400, "invalid_grant")


def test_missing_refresh_token_is_invalid_request(client):
    response = token_request(client, grant_type="refresh_token")
    body = assert_oauth_error(response, 422, "invalid_request")
    assert body["errors"][0]["pointer"] == "/refresh_token"


@pytest.mark.parametrize(
    "grant_type", ["client_credentials", "authorization_code", "implicit", "PASSWORD", "x" * 500]
)
def test_other_grant_types_are_unsupported(client, make_user, grant_type):
    """Only the password and refresh grants exist; a valid username and password do not
    turn another grant into a login."""
    make_user("alice")
    response = token_request(client, grant_type=grant_type, username="alice", password=PASSWORD)
    body = assert_oauth_error(response, 400, "unsupported_grant_type")
    assert "access_token" not in body
    assert len(body["detail"]) < 200


@pytest.mark.parametrize("form", [{}, {"grant_type": ""}, {"grant_type": "password"}])
def test_password_grant_with_or_without_grant_type(client, make_user, form):
    """The tutorial's form has no grant_type: it is the password grant."""
    make_user("alice")
    response = token_request(client, username="alice", password=PASSWORD, **form)
    assert response.status_code == 200
    assert response.get_json()["refresh_token"]


def test_wrong_password_is_the_tutorials_401_with_invalid_grant(client, make_user):
    """The tutorial's 401 and detail, plus error=invalid_grant for OAuth2 clients."""
    make_user("alice")
    response = token_request(client, grant_type="password", username="alice", password="nope")
    body = assert_oauth_error(response, 401, "invalid_grant")
    assert body["detail"] == "Incorrect username or password"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "access_token" not in body


def test_missing_credentials_are_invalid_request(client):
    response = token_request(client, grant_type="password", username="alice")
    body = assert_oauth_error(response, 422, "invalid_request")
    assert body["errors"][0]["pointer"] == "/password"


def test_json_body_is_invalid_request(client):
    response = client.post("/token", json={"username": "alice", "password": PASSWORD})
    assert_oauth_error(response, 415, "invalid_request")


def test_rate_limited_login_is_temporarily_unavailable(make_app):
    """Errors raised before the view (here the login limit) carry an OAuth2 error too."""
    client = make_app(LOGIN_RATE_LIMIT="2/minute").test_client()
    for _ in range(2):
        assert token_request(client, username="nobody", password="x").status_code == 401
    response = token_request(client, username="nobody", password="x")
    assert_oauth_error(response, 429, "temporarily_unavailable")


def test_database_down_is_temporarily_unavailable(app_without_database):
    response = token_request(app_without_database.test_client(), username="a", password="b")
    assert_oauth_error(response, 503, "temporarily_unavailable")


def test_other_endpoints_keep_plain_problems(client):
    """Only the token endpoint adds OAuth2's members."""
    body = assert_problem(client.get("/users/me"), 401)
    assert "error" not in body
