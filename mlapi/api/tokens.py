"""Tokens: the OAuth2 password login, refresh, logout, and the user's own profile."""

import time
import uuid
from datetime import timedelta

from flask import Blueprint, current_app, request
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    current_user,
    get_jwt,
    jwt_required,
)
from spectree import Response
from werkzeug.exceptions import Unauthorized, UnsupportedMediaType

from mlapi import revocation, users
from mlapi.api.docs import describe
from mlapi.api.schemas import LoginForm, Message, Problem, TokenResponse, UserOut
from mlapi.errors import ValidationProblem, error_item
from mlapi.extensions import limiter
from mlapi.limits import config_limit
from mlapi.observability.metrics import count_auth_failure

bp = Blueprint("auth", __name__)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


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
    form=LoginForm,
    resp=Response(
        HTTP_200=TokenResponse,
        HTTP_401=Problem,
        HTTP_415=Problem,
        HTTP_422=Problem,
        HTTP_429=Problem,
    ),
    tags=["auth"],
)
def login():
    """OAuth2 password login: exchange a username and password for bearer tokens.

    Failed attempts are limited per username and per client address.
    """
    if request.mimetype not in FORM_TYPES:
        raise UnsupportedMediaType("Send username and password as a form (OAuth2 password grant).")
    missing = [name for name in ("username", "password") if not request.form.get(name)]
    if missing:
        raise ValidationProblem(
            f"Missing form field(s): {', '.join(missing)}.",
            [error_item(f"/{name}", "required", "missing") for name in missing],
        )
    user = users.authenticate(request.form["username"], request.form["password"])
    if user is None:
        count_auth_failure("bad_credentials")
        raise Unauthorized("Incorrect username or password")
    return issue_tokens(user, sid=uuid.uuid4().hex)


@bp.post("/token/refresh")
@jwt_required(refresh=True)
@describe(
    resp=Response(HTTP_200=TokenResponse, HTTP_401=Problem), tags=["auth"], security={"bearer": []}
)
def refresh():
    """Exchange a refresh token (as the bearer) for a new access token."""
    claims = get_jwt()
    # An access token never outlives its session, so its revocation entry covers it.
    lifetime = min(_access_seconds(), claims["sexp"] - int(time.time()))
    access = create_access_token(
        identity=current_user.username,
        additional_claims={
            "role": current_user.role,
            "sid": claims["sid"],
            "sexp": claims["sexp"],
            "tkey": claims["tkey"],
        },
        expires_delta=timedelta(seconds=lifetime),
    )
    body = {"access_token": access, "token_type": "bearer", "expires_in": lifetime}
    return body, 200, NO_STORE


@bp.post("/logout")
@jwt_required()
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


def issue_tokens(user, sid):
    """A new login session: an access token and a refresh token sharing ``sid``."""
    session_seconds = current_app.config["REFRESH_TOKEN_DAYS"] * 86400
    claims = {
        "role": user.role,
        "sid": sid,
        "sexp": int(time.time()) + session_seconds,
        "tkey": user.token_key or "",
    }
    body = {
        "access_token": create_access_token(identity=user.username, additional_claims=claims),
        "refresh_token": create_refresh_token(
            identity=user.username,
            additional_claims=claims,
            expires_delta=timedelta(seconds=claims["sexp"] - time.time()),
        ),
        "token_type": "bearer",
        "expires_in": _access_seconds(),
    }
    return body, 200, NO_STORE


def _access_seconds():
    return current_app.config["ACCESS_TOKEN_MINUTES"] * 60


@bp.get("/users/me")
@jwt_required()
@describe(resp=Response(HTTP_200=UserOut, HTTP_401=Problem), tags=["auth"], security={"bearer": []})
def read_users_me():
    """The authenticated user's profile."""
    return current_user.to_public()
