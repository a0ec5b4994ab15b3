"""OAuth2 client libraries against the token endpoint of a real gunicorn: Authlib's
OAuth2Session and requests-oauthlib's LegacyApplicationClient log in, refresh expired
access tokens on their own, and raise their own errors for refused requests."""

import time

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from authlib.integrations.requests_client import OAuthError
from oauthlib.oauth2 import (
    BackendApplicationClient,
    InvalidGrantError,
    LegacyApplicationClient,
)
from oauthlib.oauth2 import UnsupportedGrantTypeError as OAuthlibUnsupportedGrantType
from requests_oauthlib import OAuth2Session as OAuthlibSession

from tests.helpers import PASSWORD

pytestmark = pytest.mark.slow


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


SHORT_LIVED = {"MLAPI_ACCESS_TOKEN_MINUTES": "0.05"}  # 3 seconds


@pytest.fixture
def server(servers):
    """gunicorn with 3-second access tokens and a user alice."""
    server = servers(env=SHORT_LIVED, create=False)
    created = server.flask("users", "create", "alice", "--password", PASSWORD)
    assert created.returncode == 0, created.stderr
    return server.start()


def wait_past_expiry(token):
    time.sleep(max(0.0, token["expires_at"] - time.time()) + 1.1)


def test_authlib_logs_in_and_refreshes_an_expired_token(server):
    """Authlib's OAuth2Session: password grant, then automatic refresh once the access
    token has expired; the refreshed token works and the session is still one session."""
    updates = []
    session = AuthlibSession(
        token_endpoint=server.url("/token"),
        update_token=lambda token, **_: updates.append(token),
        leeway=0,
    )
    token = session.fetch_token(server.url("/token"), username="alice", password=PASSWORD)
    assert token["expires_in"] == 3 and token["token_type"] == "bearer"
    assert session.get(server.url("/users/me"), timeout=10).json()["username"] == "alice"
    wait_past_expiry(token)
    expired = requests.get(
        server.url("/users/me"), headers=bearer(token["access_token"]), timeout=10
    )
    assert expired.status_code == 401
    me = session.get(server.url("/users/me"), timeout=10)
    assert me.status_code == 200, me.text
    assert len(updates) == 1
    assert updates[0]["access_token"] != token["access_token"]
    assert session.token["access_token"] == updates[0]["access_token"]
    # Logging out with the refreshed token ends the session: the first refresh token too.
    assert session.post(server.url("/logout"), timeout=10).status_code == 200
    with pytest.raises(OAuthError) as raised:
        session.refresh_token(server.url("/token"), refresh_token=token["refresh_token"])
    assert raised.value.error == "invalid_grant"


def test_authlib_wrong_password_raises_its_oauth_error(server):
    """A failed login raises Authlib's OAuthError; no error body is stored as a token."""
    session = AuthlibSession(token_endpoint=server.url("/token"))
    with pytest.raises(OAuthError) as raised:
        session.fetch_token(server.url("/token"), username="alice", password="wrong-password")
    assert raised.value.error == "invalid_grant"
    assert raised.value.description == "Incorrect username or password"
    assert not session.token


def test_authlib_client_credentials_is_unsupported(server):
    session = AuthlibSession(token_endpoint=server.url("/token"))
    with pytest.raises(OAuthError) as raised:
        session.fetch_token(
            server.url("/token"),
            grant_type="client_credentials",
            username="alice",
            password=PASSWORD,
        )
    assert raised.value.error == "unsupported_grant_type"
    assert not session.token


@pytest.fixture
def insecure_transport(monkeypatch):
    """oauthlib refuses plain HTTP unless told the transport is a test's loopback."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


def test_requests_oauthlib_logs_in_and_refreshes_an_expired_token(server, insecure_transport):
    """requests-oauthlib's LegacyApplicationClient (the password grant) with auto-refresh."""
    updates = []
    session = OAuthlibSession(
        client=LegacyApplicationClient(client_id="mlapi-cli"),
        auto_refresh_url=server.url("/token"),
        token_updater=updates.append,
    )
    token = session.fetch_token(
        server.url("/token"), username="alice", password=PASSWORD, include_client_id=True
    )
    assert session.get(server.url("/users/me"), timeout=10).status_code == 200
    wait_past_expiry(token)
    me = session.get(server.url("/users/me"), timeout=10)
    assert me.status_code == 200, me.text
    assert len(updates) == 1
    assert updates[0]["access_token"] != token["access_token"]


def test_requests_oauthlib_wrong_password_raises_invalid_grant(server, insecure_transport):
    session = OAuthlibSession(client=LegacyApplicationClient(client_id="mlapi-cli"))
    with pytest.raises(InvalidGrantError) as raised:
        session.fetch_token(server.url("/token"), username="alice", password="wrong-password")
    assert raised.value.description == "Incorrect username or password"
    assert not session.token


def test_requests_oauthlib_client_credentials_is_unsupported(server, insecure_transport):
    """client_credentials with a username and password is refused, not a login."""
    session = OAuthlibSession(client=BackendApplicationClient(client_id="mlapi-cli"))
    with pytest.raises(OAuthlibUnsupportedGrantType):
        session.fetch_token(server.url("/token"), username="alice", password=PASSWORD)
    assert not session.token
