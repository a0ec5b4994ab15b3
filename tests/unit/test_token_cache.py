"""Tokens verified once per worker: the private names relied on, and the checks kept."""

import inspect
import time
from importlib.metadata import version

import jwt as pyjwt
import pytest
from flask_jwt_extended import JWTManager, view_decorators

from tests.helpers import assert_problem, client_for

BODY = [1.0, 2.0]


def test_the_pinned_versions_are_installed():
    """mlapi/token_cache.py overrides private names of exactly these versions."""
    pins = {}
    with open("requirements.txt") as handle:
        for line in handle:
            name, _, pinned = line.strip().partition("==")
            pins[name.lower()] = pinned
    assert version("flask-jwt-extended") == pins["flask-jwt-extended"] == "4.7.4"
    assert version("pyjwt") == pins["pyjwt"] == "2.15.1"


def test_the_private_names_still_exist_and_are_called_as_assumed():
    decode = inspect.signature(JWTManager._decode_jwt_from_config)
    assert list(decode.parameters) == ["self", "encoded_token", "csrf_value", "allow_expired"]
    source = inspect.getsource(view_decorators._decode_jwt_from_request)
    assert "decode_token(encoded_token, csrf_token)" in source
    assert "get_unverified_jwt_headers(encoded_token)" in source
    assert hasattr(view_decorators, "get_unverified_jwt_headers")


@pytest.fixture
def parses(monkeypatch):
    """How often PyJWT splits and decodes a token (every decode path goes through _load)."""
    calls = []
    original = pyjwt.api_jws.PyJWS._load

    def counting(self, jwt):
        calls.append(jwt)
        return original(self, jwt)

    monkeypatch.setattr(pyjwt.api_jws.PyJWS, "_load", counting)
    return calls


def test_a_kept_token_is_not_parsed_again(make_app, parses):
    client, headers = client_for(make_app())
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    first = len(parses)
    for _ in range(5):
        assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    assert first <= 1
    assert len(parses) == first


def test_an_expired_kept_token_is_refused(make_app):
    client, headers = client_for(make_app(JWT_ACCESS_TOKEN_EXPIRES=1))
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    time.sleep(1.2)
    body = assert_problem(client.post("/v1/predict", json=BODY, headers=headers), 401)
    assert "expired" in body["detail"]


def test_a_forged_token_is_never_kept(make_app):
    app = make_app()
    client, headers = client_for(app)
    forged = headers["Authorization"][:-2] + (
        "AA" if not headers["Authorization"].endswith("AA") else "BB"
    )
    for _ in range(2):
        response = client.post("/v1/predict", json=BODY, headers={"Authorization": forged})
        assert_problem(response, 401)
    assert len(app.extensions["mlapi.verified_tokens"]._tokens) == 0


def test_each_app_keeps_its_own_tokens(make_app):
    """A token of one secret is not accepted by an app with another secret in the process."""
    first = make_app()
    client, headers = client_for(first)
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    other = make_app(SECRET_KEY="another-secret-key-that-is-at-least-32-bytes")
    other_client, _ = client_for(other, "bob")
    assert_problem(other_client.post("/v1/predict", json=BODY, headers=headers), 401)
