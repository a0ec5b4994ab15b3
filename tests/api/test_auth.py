"""Login, token lifecycle, roles and attack resistance."""

import base64
import hashlib
import hmac
import json
import time

import jwt as pyjwt
import pytest

from tests.helpers import PASSWORD, assert_problem, write_user

SECRET = "test-secret-key-that-is-at-least-32-bytes-long"

pytestmark = [
    pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


def b64(data):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**overrides):
    now = int(time.time())
    base = {
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j1",
        "type": "access",
        "fresh": False,
        "role": "user",
        "sid": "s1",
        "sexp": now + 3600,
        "tkey": "",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def assert_invalid_token(response):
    body = assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return body


# --- login ------------------------------------------------------------------------


def test_login_returns_bearer_tokens_not_cached(client, make_user):
    """POST /token answers access and refresh tokens, bearer type, expiry, and no-store."""
    make_user("alice")
    response = client.post("/token", data={"username": "alice", "password": PASSWORD})
    body = response.get_json()
    assert response.status_code == 200
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    assert body["access_token"] and body["refresh_token"]
    assert response.headers["Cache-Control"] == "no-store"


def test_wrong_password_and_unknown_user_look_the_same(client, make_user):
    """Unknown user and wrong password get the same status and body (no user enumeration)."""
    make_user("alice")
    wrong = client.post("/token", data={"username": "alice", "password": "wrong-password"})
    unknown = client.post("/token", data={"username": "nobody", "password": "wrong-password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert wrong.get_json()["detail"] == "Incorrect username or password"
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_user_costs_a_hash_check(app, monkeypatch, client):
    """An unknown username still runs a password hash check, so timing does not tell."""
    from mlapi import users

    calls = []
    real = users.check_password_hash
    monkeypatch.setattr(users, "check_password_hash", lambda h, p: calls.append(h) or real(h, p))
    client.post("/token", data={"username": "nobody", "password": "whatever-pass"})
    assert len(calls) == 1


def test_login_needs_both_form_fields(client):
    """A login without username or password is a 422 naming the missing fields."""
    body = assert_problem(client.post("/token", data={"username": "alice"}), 422)
    assert "password" in body["detail"]


def test_login_with_json_is_415(client, make_user):
    """The OAuth2 password grant is a form; a JSON login is a 415."""
    make_user("alice")
    response = client.post("/token", json={"username": "alice", "password": PASSWORD})
    assert_problem(response, 415)


def test_disabled_user_cannot_log_in(app, client, make_user):
    """A disabled user's correct password is refused like a wrong one."""
    make_user("alice")
    write_user(app, "alice", disabled=True)
    response = client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 401


def test_users_me_never_shows_the_hash(client, auth):
    """GET /users/me answers username, email, disabled and nothing else."""
    response = client.get("/users/me", headers=auth)
    assert response.get_json() == {
        "username": "alice",
        "email": "alice@example.com",
        "disabled": False,
    }


# --- lifecycle --------------------------------------------------------------------


def tokens(client, username="alice"):
    response = client.post("/token", data={"username": username, "password": PASSWORD})
    return response.get_json()


def test_refresh_gives_a_working_access_token(client, make_user):
    """POST /token/refresh with the refresh token returns a new, working access token."""
    make_user("alice")
    pair = tokens(client)
    response = client.post("/token/refresh", headers=bearer(pair["refresh_token"]))
    assert response.status_code == 200
    fresh = response.get_json()["access_token"]
    assert fresh != pair["access_token"]
    assert client.get("/users/me", headers=bearer(fresh)).status_code == 200


def test_refresh_token_is_refused_as_access_token(client, make_user):
    """A refresh token does not authorise API calls."""
    make_user("alice")
    pair = tokens(client)
    assert_invalid_token(client.get("/users/me", headers=bearer(pair["refresh_token"])))


def test_access_token_is_refused_for_refresh(client, make_user):
    """An access token cannot be used to mint new tokens."""
    make_user("alice")
    pair = tokens(client)
    assert_invalid_token(client.post("/token/refresh", headers=bearer(pair["access_token"])))


def test_logout_revokes_access_and_refresh_tokens(client, make_user):
    """After POST /logout the access token, its refresh token and refreshed tokens all fail."""
    make_user("alice")
    pair = tokens(client)
    refreshed = client.post("/token/refresh", headers=bearer(pair["refresh_token"])).get_json()
    response = client.post("/logout", headers=bearer(pair["access_token"]))
    assert response.status_code == 200
    assert_invalid_token(client.get("/users/me", headers=bearer(pair["access_token"])))
    assert_invalid_token(client.get("/users/me", headers=bearer(refreshed["access_token"])))
    assert_invalid_token(client.post("/token/refresh", headers=bearer(pair["refresh_token"])))


def test_logout_leaves_other_sessions_alone(client, make_user):
    """Revocation is per login session: another login of the same user keeps working."""
    make_user("alice")
    first, second = tokens(client), tokens(client)
    client.post("/logout", headers=bearer(first["access_token"]))
    assert client.get("/users/me", headers=bearer(second["access_token"])).status_code == 200


def test_revocation_entry_expires_with_the_session(app, client, make_user):
    """The stored revocation lives until the session's refresh token would expire."""
    from datetime import UTC

    from mlapi.extensions import db

    make_user("alice")
    pair = tokens(client)
    refresh_exp = pyjwt.decode(pair["refresh_token"], options={"verify_signature": False})["exp"]
    client.post("/logout", headers=bearer(pair["access_token"]))
    with app.app_context(), db.connect() as conn:
        ((stored,),) = conn.all("SELECT expires_at FROM revoked_tokens")
        stored = db.read_time(stored)
        expires_at = stored.replace(tzinfo=stored.tzinfo or UTC)
        assert abs(expires_at.timestamp() - refresh_exp) <= 1


def test_expired_access_token_is_401(make_app, make_user):
    """A token past its exp is refused with invalid_token."""
    app = make_app(ACCESS_TOKEN_MINUTES=1 / 60)
    client = app.test_client()
    with app.app_context():
        from mlapi import users

        users.create("alice", PASSWORD)
    access = tokens(client)["access_token"]
    time.sleep(2.1)
    assert_invalid_token(client.get("/users/me", headers=bearer(access)))


# --- who may do what --------------------------------------------------------------


def test_disabled_user_token_stops_working_at_once(app, client, auth):
    """Disabling a user invalidates their existing token on the next request."""
    assert client.get("/users/me", headers=auth).status_code == 200
    write_user(app, "alice", disabled=True)
    assert_invalid_token(client.post("/predict", json=[1], headers=auth))


def test_deleted_user_token_stops_working_at_once(app, client, auth):
    """Deleting a user invalidates their existing token on the next request."""
    from mlapi import users

    with app.app_context():
        users.delete("alice")
    assert_invalid_token(client.get("/users/me", headers=auth))


def test_cache_invalidation_needs_admin(client, auth):
    """A regular user gets 403 insufficient_scope from DELETE /cache/invalidate."""
    response = client.delete("/cache/invalidate", json=[1, 2], headers=auth)
    assert_problem(response, 403)
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_demoted_admin_loses_admin_on_next_request(app, client, admin_auth):
    """The role is read from the database per request, not trusted from the token."""
    assert client.delete("/cache/invalidate", json=[1], headers=admin_auth).status_code == 200
    write_user(app, "root", role="user")
    assert client.delete("/cache/invalidate", json=[1], headers=admin_auth).status_code == 403


# --- attacks ----------------------------------------------------------------------


def forged(header, payload, signature=None):
    head, body = b64(header), b64(payload)
    if signature is None:
        mac = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        signature = b64(mac)
    return f"{head}.{body}.{signature}"


ATTACKS = {
    "alg none": lambda c: forged({"alg": "none", "typ": "JWT"}, c(), signature=""),
    "alg NONE": lambda c: forged({"alg": "NONE", "typ": "JWT"}, c(), signature=""),
    "alg nOnE": lambda c: forged({"alg": "nOnE"}, c(), signature=""),
    "HS384 with the real secret": lambda c: pyjwt.encode(c(), SECRET, algorithm="HS384"),
    "HS512 with the real secret": lambda c: pyjwt.encode(c(), SECRET, algorithm="HS512"),
    "RS256 header": lambda c: forged({"alg": "RS256", "typ": "JWT"}, c(), signature="AAAA"),
    "stripped signature": lambda c: (
        pyjwt.encode(c(), SECRET, algorithm="HS256").rsplit(".", 1)[0] + "."
    ),
    "edited payload": lambda c: ".".join(
        [
            pyjwt.encode(c(), SECRET, algorithm="HS256").split(".")[0],
            b64(c(role="admin")),
            pyjwt.encode(c(), SECRET, algorithm="HS256").split(".")[2],
        ]
    ),
    "wrong secret": lambda c: pyjwt.encode(c(), "another-secret-of-enough-length!!", "HS256"),
    "kid header": lambda c: pyjwt.encode(c(), SECRET, "HS256", headers={"kid": "../../k"}),
    "jku header": lambda c: pyjwt.encode(c(), SECRET, "HS256", headers={"jku": "http://x/k"}),
    "jwk header": lambda c: pyjwt.encode(c(), SECRET, "HS256", headers={"jwk": {"kty": "oct"}}),
    "crit header": lambda c: forged({"alg": "HS256", "crit": ["exp"]}, c()),
    "missing exp": lambda c: pyjwt.encode(c(exp=None), SECRET, "HS256"),
    "future nbf": lambda c: pyjwt.encode(c(nbf=int(time.time()) + 3600), SECRET, "HS256"),
    "expired": lambda c: pyjwt.encode(c(exp=int(time.time()) - 10), SECRET, "HS256"),
    "missing session": lambda c: pyjwt.encode(c(sid=None), SECRET, "HS256"),
    "stale token key": lambda c: pyjwt.encode(c(tkey="0" * 16), SECRET, "HS256"),
    "missing token key": lambda c: pyjwt.encode(c(tkey=None), SECRET, "HS256"),
    "garbage": lambda c: "not.a.jwt",
    "two segments": lambda c: "abc.def",
}


def alice_claims(app):
    """A claims factory carrying alice's real token key, so only the attack is wrong."""
    from mlapi import users

    with app.app_context():
        key = users.get("alice").token_key
    return lambda **overrides: claims(**{"tkey": key, **overrides})


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_forged_tokens_are_401_invalid_token(app, client, auth, attack):
    """Every forged, tampered or expired token is a 401 invalid_token, never a 2xx, 422 or 500."""
    response = client.post(
        "/predict", json=[1, 2], headers=bearer(ATTACKS[attack](alice_claims(app)))
    )
    assert_invalid_token(response)


def test_a_token_signed_with_the_real_secret_and_key_shape_works(app, client, auth):
    """The forgery helper is sound: an HS256 token with the server's claims is accepted."""
    token = forged({"alg": "HS256"}, alice_claims(app)())
    response = client.post("/predict", json=[1, 2], headers=bearer(token))
    assert response.status_code == 200


def test_token_in_query_string_or_cookie_is_ignored(client, auth):
    """Tokens are read from the Authorization header only."""
    token = auth["Authorization"].split()[1]
    assert client.post(f"/predict?access_token={token}&jwt={token}", json=[1]).status_code == 401
    client.set_cookie("access_token_cookie", token)
    assert client.post("/predict", json=[1]).status_code == 401


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(client, auth, scheme):
    """RFC 7235: the auth scheme matches in any case."""
    token = auth["Authorization"].split()[1]
    response = client.post("/predict", json=[1], headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 200


def test_missing_token_challenge_has_no_error_code(client):
    """RFC 6750: a request without credentials gets a bare Bearer challenge."""
    response = client.get("/users/me")
    assert_problem(response, 401)
    assert "error=" not in response.headers["WWW-Authenticate"]


# --- brute force ------------------------------------------------------------------


def test_failed_logins_are_limited_per_username(make_app):
    """After LOGIN_RATE_LIMIT failures for one username, even other addresses get 429."""
    app = make_app(LOGIN_RATE_LIMIT="3/minute")
    client = app.test_client()
    for n in range(3):
        address = {"REMOTE_ADDR": f"10.0.0.{n}"}
        response = client.post(
            "/token", data={"username": "alice", "password": "wrong-guess"}, environ_base=address
        )
        assert response.status_code == 401
    blocked = client.post(
        "/token",
        data={"username": "alice", "password": "x"},
        environ_base={"REMOTE_ADDR": "10.9.9.9"},
    )
    body = assert_problem(blocked, 429)
    assert int(blocked.headers["Retry-After"]) > 0
    assert body["status"] == 429
    other = client.post("/token", data={"username": "bob", "password": "wrong-guess"})
    assert other.status_code == 401


def test_failed_logins_are_limited_per_address(make_app):
    """After LOGIN_RATE_LIMIT failures from one address, any username from it gets 429."""
    app = make_app(LOGIN_RATE_LIMIT="3/minute")
    client = app.test_client()
    for name in ("u1", "u2", "u3"):
        assert (
            client.post("/token", data={"username": name, "password": "wrong-guess"}).status_code
            == 401
        )
    assert client.post("/token", data={"username": "u4", "password": "x"}).status_code == 429


def test_successful_logins_are_not_counted(make_app):
    """Logging in correctly many times never trips the failed-login limit."""
    app = make_app(LOGIN_RATE_LIMIT="2/minute")
    client = app.test_client()
    with app.app_context():
        from mlapi import users

        users.create("alice", PASSWORD)
    for _ in range(5):
        assert (
            client.post("/token", data={"username": "alice", "password": PASSWORD}).status_code
            == 200
        )


# --- passwords --------------------------------------------------------------------


def test_default_hash_is_scrypt(make_app):
    """Without an override, passwords are stored as werkzeug scrypt hashes."""
    from config import Config
    from mlapi import users

    app = make_app(PASSWORD_HASH_METHOD=Config.PASSWORD_HASH_METHOD)
    with app.app_context():
        assert users.create("alice", PASSWORD).password_hash.startswith("scrypt:32768:8:1$")


def test_hash_is_upgraded_at_login_when_parameters_change(make_app, tmp_path):
    """A hash made with old parameters is replaced by one with the current ones at login."""
    from mlapi import users

    old = make_app(PASSWORD_HASH_METHOD="pbkdf2:sha256:1000")
    with old.app_context():
        users.create("alice", PASSWORD)
    new = make_app(PASSWORD_HASH_METHOD="pbkdf2:sha256:2000")
    response = new.test_client().post("/token", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    with new.app_context():
        assert users.get("alice").password_hash.startswith("pbkdf2:sha256:2000$")


def test_concurrent_logouts_of_one_session_all_succeed(app, make_user):
    """Two clients logging out the same session at once: no 500, the session ends."""
    import concurrent.futures

    make_user("alice")
    pair = tokens(app.test_client())

    def logout(_):
        return app.test_client().post("/logout", headers=bearer(pair["access_token"])).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(logout, range(12)))
    assert set(statuses) <= {200, 401} and 200 in statuses, statuses
    assert_invalid_token(app.test_client().get("/users/me", headers=bearer(pair["access_token"])))


def test_recreated_username_does_not_inherit_old_tokens(app, client, make_user):
    """Tokens of a deleted user are refused for a new user who takes the same name."""
    from mlapi import users

    make_user("bob")
    old = tokens(client, "bob")
    with app.app_context():
        users.delete("bob")
    make_user("bob")
    assert_invalid_token(client.get("/users/me", headers=bearer(old["access_token"])))
    assert_invalid_token(client.post("/token/refresh", headers=bearer(old["refresh_token"])))
    assert (
        client.get("/users/me", headers=bearer(tokens(client, "bob")["access_token"])).status_code
        == 200
    )


@pytest.mark.parametrize("username", ["alice\x00", "\x00", "al\nice", " alice"])
def test_odd_usernames_fail_like_wrong_passwords(client, make_user, username):
    """Control characters or padding in a login name are a plain 401, on every database."""
    make_user("alice")
    response = client.post("/token", data={"username": username, "password": PASSWORD})
    assert response.status_code == 401
    assert response.get_json()["detail"] == "Incorrect username or password"
