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
    client, headers = client_for(make_app(ACCESS_TOKEN_MINUTES=1 / 60))
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


def test_the_library_keeps_a_verified_request_where_verify_request_keeps_it():
    """mlapi.token_cache.verify_request runs the rest of verify_jwt_in_request itself, so it
    relies on the library's check order, its _load_user and its four names in ``g``."""
    source = inspect.getsource(view_decorators.verify_jwt_in_request)
    for name in ("user", "header", "", "location"):
        attribute = "_jwt_extended_jwt" + (f"_{name}" if name else "")
        assert f"g.{attribute} = " in source
    assert "g._jwt_extended_jwt_user = _load_user(jwt_header, jwt_data)" in source
    checks = inspect.getsource(view_decorators._decode_jwt_from_request)
    order = [
        checks.index("verify_token_type(decoded_token, refresh)"),
        checks.index("verify_token_not_blocklisted(jwt_header, decoded_token)"),
        checks.index("custom_verification_for_token(jwt_header, decoded_token)"),
    ]
    assert order == sorted(order)
    assert list(inspect.signature(view_decorators._load_user).parameters) == [
        "jwt_header",
        "jwt_data",
    ]


def _verified_state(app, headers, verify):
    from flask import g
    from flask_jwt_extended import current_user, get_jwt, get_jwt_header, get_jwt_identity

    from mlapi.auth import current_identity

    with app.test_request_context("/v1/predict", method="POST", headers=headers):
        verify()
        assert current_identity() == get_jwt_identity()  # the limits' and budget's key
        return (
            get_jwt(),
            get_jwt_header(),
            g._jwt_extended_jwt_location,
            current_user.username,
        )


def test_a_kept_token_leaves_the_request_as_the_library_does(make_app):
    """The same claims, header, location and current_user as verify_jwt_in_request(), with
    the library's checks or mlapi.auth.admit's."""
    from mlapi import auth, token_cache

    app = make_app()
    client, headers = client_for(app)
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    with app.test_request_context("/v1/predict", method="POST", headers=headers):
        assert token_cache.kept_bearer() is not None
    ours = _verified_state(app, headers, token_cache.verify_request)
    direct = _verified_state(app, headers, lambda: token_cache.verify_request(auth.admit))
    library = _verified_state(app, headers, view_decorators.verify_jwt_in_request)
    assert ours == direct == library
    assert ours[2] == "headers" and ours[3] == "alice"


@pytest.mark.parametrize(
    "header",
    ["bearer {t}", "Bearer  {t}", "Bearer {t} ", "Bearer {t}, Basic x", "Basic x, Bearer {t}"],
)
def test_other_header_forms_are_read_by_the_library(make_app, header):
    """Only ``Bearer <token>`` exactly takes the kept path; the library reads the rest."""
    from mlapi import token_cache

    app = make_app()
    client, headers = client_for(app)
    token = headers["Authorization"].removeprefix("Bearer ")
    assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
    other = {"Authorization": header.format(t=token)}
    with app.test_request_context("/v1/predict", method="POST", headers=other):
        assert token_cache.kept_bearer() is None
    # Each form names the same token to the library, which accepts it.
    assert client.post("/v1/predict", json=BODY, headers=other).status_code == 200


def test_a_kept_refresh_token_is_refused_on_a_prediction_as_before(make_app):
    """The token type is checked on the kept path too, with the library's own answer."""
    from mlapi import token_cache
    from tests.helpers import PASSWORD

    app = make_app()
    client, _ = client_for(app)

    tokens = client.post("/token", data={"username": "alice", "password": PASSWORD}).get_json()
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    before = assert_problem(client.post("/v1/predict", json=BODY, headers=refresh), 401)
    # Now kept by the worker (a refresh verifies it), then refused again, in the same words.
    assert client.post("/token/refresh", headers=refresh).status_code == 200
    with app.test_request_context("/v1/predict", method="POST", headers=refresh):
        assert token_cache.kept_bearer() is not None
    after = assert_problem(client.post("/v1/predict", json=BODY, headers=refresh), 401)
    assert before["detail"] == after["detail"]


def test_mlapi_calls_its_own_loaders_directly_only_while_they_are_registered(make_app):
    """mlapi.auth.own_loaders reads three private attributes of flask-jwt-extended 4.7.4's
    JWTManager; with another loader registered, the library's own chain runs."""
    from mlapi import auth
    from mlapi.extensions import jwt

    make_app()
    assert auth.own_loaders()
    original = jwt._user_lookup_callback
    try:
        jwt.user_lookup_loader(lambda header, data: None)
        assert not auth.own_loaders()
    finally:
        jwt._user_lookup_callback = original
    assert auth.own_loaders()


@pytest.mark.parametrize("refusal", ["logged out", "disabled", "a header never issued"])
def test_the_direct_checks_refuse_a_kept_token_as_the_library_does(make_app, monkeypatch, refusal):
    """mlapi.auth.admit and the library's chain give a kept token the same refusal."""
    from mlapi import auth, token_cache, users

    admitted = []
    admit = auth.admit

    def spying(header, claims):
        admitted.append(claims["sub"])
        return admit(header, claims)

    monkeypatch.setattr(auth, "admit", spying)
    answers = {}
    for direct in (True, False):
        monkeypatch.setattr(auth, "own_loaders", lambda direct=direct: direct)
        app = make_app()
        username = f"alice{int(direct)}"
        client, headers = client_for(app, username)
        assert client.post("/v1/predict", json=BODY, headers=headers).status_code == 200
        if refusal == "logged out":
            assert client.post("/logout", headers=headers).status_code == 200
        elif refusal == "disabled":
            with app.app_context():
                users.set_disabled(username, True)
        else:
            secret = app.config["JWT_SECRET_KEY"]
            token = headers["Authorization"].removeprefix("Bearer ")
            claims = pyjwt.decode(token, secret, algorithms=["HS256"])
            token = pyjwt.encode(claims, secret, algorithm="HS256", headers={"kid": "k1"})
            headers = {"Authorization": f"Bearer {token}"}
            assert_problem(client.post("/v1/predict", json=BODY, headers=headers), 401)
        with app.test_request_context("/v1/predict", method="POST", headers=headers):
            assert token_cache.kept_bearer() is not None
        admitted.clear()
        answers[direct] = assert_problem(
            client.post("/v1/predict", json=BODY, headers=headers), 401
        )
        assert bool(admitted) is direct
    assert answers[True] == answers[False]
