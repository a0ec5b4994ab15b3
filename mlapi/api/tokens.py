"""Tokens: the OAuth2 token endpoint (password and refresh grants), logout, and the
user's own profile."""

import time
import uuid
from datetime import timedelta

from flask import Blueprint, current_app, json, request
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    current_user,
    decode_token,
    get_jwt,
    get_unverified_jwt_headers,
    jwt_required,
)
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError
from werkzeug.exceptions import UnsupportedMediaType

from config import access_token_seconds
from mlapi import revocation, users
from mlapi.api.docs import Response, describe
from mlapi.api.schemas import (
    Message,
    Problem,
    TokenForm,
    TokenProblem,
    TokenResponse,
    UserOut,
)
from mlapi.auth import token_required, verify_token_shape
from mlapi.errors import PROBLEM_MIMETYPE, TokenRequestError, ValidationProblem, error_item
from mlapi.extensions import limiter
from mlapi.limits import config_limit
from mlapi.observability.metrics import count_auth_failure

bp = Blueprint("auth", __name__)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# RFC 6749 §5.2 codes for token endpoint errors raised outside the view (limits, body size,
# database); the view raises its own codes.
TOKEN_ERRORS = {
    401: "invalid_grant",
    429: "temporarily_unavailable",
    503: "temporarily_unavailable",
    500: "server_error",
}


def login_username():
    # By the name's key: "Alice" and "ALICE" are one account and share one budget.
    return f"login-user:{users.username_key(request.form.get('username', '')[:256])}"


def login_address():
    return f"login-addr:{request.remote_addr}"


def failed_login(response):
    return response.status_code == 401


@bp.post("/token")
@limiter.limit(config_limit("LOGIN_RATE_LIMIT"), key_func=login_username, deduct_when=failed_login)
@limiter.limit(config_limit("LOGIN_RATE_LIMIT"), key_func=login_address, deduct_when=failed_login)
@describe(
    form=TokenForm,
    resp=Response(
        HTTP_200=TokenResponse,
        HTTP_400=TokenProblem,
        HTTP_401=TokenProblem,
        HTTP_415=TokenProblem,
        HTTP_422=TokenProblem,
        HTTP_429=TokenProblem,
    ),
    tags=["auth"],
)
def login():
    """OAuth2 token endpoint: the password grant (RFC 6749 §4.3) or the refresh grant (§6).

    Without ``grant_type`` the form is a password login, as the tutorial's clients send it.
    Failed logins are limited per username and per client address.
    """
    if request.mimetype not in FORM_TYPES:
        raise UnsupportedMediaType("Send the token request as a form (OAuth2 password grant).")
    grant_type = request.form.get("grant_type") or "password"
    if grant_type == "refresh_token":
        user, claims = redeem_refresh_token(required_fields("refresh_token")["refresh_token"])
        return issue_tokens(user, session_claims(user, claims["sid"], claims["sexp"]))
    if grant_type != "password":
        raise TokenRequestError(
            "unsupported_grant_type",
            f"grant_type {grant_type[:40]!r} is not supported: use 'password' or 'refresh_token'.",
        )
    form = required_fields("username", "password")
    user = users.authenticate(form["username"], form["password"])
    if user is None:
        count_auth_failure("bad_credentials")
        raise TokenRequestError("invalid_grant", "Incorrect username or password", code=401)
    return issue_tokens(user, new_session(user))


@bp.post("/token/refresh")
@jwt_required(refresh=True)
@describe(
    resp=Response(HTTP_200=TokenResponse, HTTP_401=Problem), tags=["auth"], security={"bearer": []}
)
def refresh():
    """Exchange a refresh token (as the bearer) for a new access token."""
    claims = get_jwt()
    return issue_tokens(
        current_user, session_claims(current_user, claims["sid"], claims["sexp"]), refresh=False
    )


@bp.after_request
def add_oauth_error(response):
    """Every error of the token endpoint carries RFC 6749 §5.2's ``error`` members too,
    including those raised before the view runs (rate limit, body size, database)."""
    if request.endpoint != f"{bp.name}.login" or response.mimetype != PROBLEM_MIMETYPE:
        return response
    body = response.get_json()
    if "error" not in body:
        body["error"] = TOKEN_ERRORS.get(response.status_code, "invalid_request")
        body["error_description"] = body["detail"]
        response.set_data(json.dumps(body) + "\n")
    return response


@bp.post("/logout")
@token_required
@describe(
    resp=Response(HTTP_200=Message, HTTP_401=Problem, HTTP_503=Problem),
    tags=["auth"],
    security={"bearer": []},
)
def logout():
    """Revoke the presented access token and the refresh token issued with it, everywhere."""
    claims = get_jwt()
    revocation.revoke(claims["sid"], claims["sexp"])
    return {"message": "Logged out"}


def required_fields(*names):
    """The named form fields, all non-empty, or a 422 problem naming the missing ones."""
    missing = [name for name in names if not request.form.get(name)]
    if missing:
        raise ValidationProblem(
            f"Missing form field(s): {', '.join(missing)}.",
            [error_item(f"/{name}", "required", "missing") for name in missing],
        )
    return {name: request.form[name] for name in names}


def redeem_refresh_token(token):
    """The user and claims of a valid, unrevoked refresh token; ``invalid_grant`` otherwise.

    The same checks as ``@jwt_required(refresh=True)``, for a token sent in the form body.
    """
    try:
        header = get_unverified_jwt_headers(token)
        claims = decode_token(token)
    except (PyJWTError, JWTExtendedException):
        claims = None
    if claims and claims.get("type") == "refresh" and verify_token_shape(header, claims):
        user, revoked = users.load_principal(claims["sub"], claims["sid"])
        if not revoked and users.accepts(user, claims):
            return user, claims
    count_auth_failure("invalid_refresh_token")
    raise TokenRequestError(
        "invalid_grant", "The refresh token is invalid, expired or revoked; log in again."
    )


def new_session(user):
    """The claims of a new login session for ``user``."""
    session_seconds = current_app.config["REFRESH_TOKEN_DAYS"] * 86400
    return session_claims(user, uuid.uuid4().hex, int(time.time()) + session_seconds)


def session_claims(user, sid, sexp):
    # A refresh keeps the session id and end, so logout still revokes the whole session.
    return {"role": user.role, "sid": sid, "sexp": sexp, "tkey": user.token_key or ""}


def issue_tokens(user, claims, refresh=True):
    """An access token, and with ``refresh`` a refresh token, for the session ``claims`` name."""
    remaining = claims["sexp"] - int(time.time())
    # An access token never outlives its session, so its revocation entry covers it.
    lifetime = min(access_token_seconds(current_app.config), remaining)
    body = {
        "access_token": create_access_token(
            identity=user.username,
            additional_claims=claims,
            expires_delta=timedelta(seconds=lifetime),
        ),
        "token_type": "bearer",
        "expires_in": lifetime,
    }
    if refresh:
        body["refresh_token"] = create_refresh_token(
            identity=user.username,
            additional_claims=claims,
            expires_delta=timedelta(seconds=remaining),
        )
    return body, 200, NO_STORE


@bp.get("/users/me")
@token_required
@describe(resp=Response(HTTP_200=UserOut, HTTP_401=Problem), tags=["auth"], security={"bearer": []})
def read_users_me():
    """The authenticated user's profile."""
    return current_user.to_public()
