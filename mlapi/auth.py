"""Authentication: the OAuth2 password login, bearer tokens, and roles.

flask-jwt-extended verifies tokens; every one of its failure callbacks answers
here with a 401 problem and an RFC 6750 ``WWW-Authenticate`` challenge (its
default is a 422 ``{"msg"}``).
"""

import time
import uuid
from datetime import timedelta
from functools import wraps

from flask import Blueprint, current_app, g, json, request
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
from spectree import Response
from werkzeug.exceptions import Unauthorized, UnsupportedMediaType

from mlapi import revocation, users
from mlapi.errors import (
    PROBLEM_MIMETYPE,
    InsufficientScope,
    InvalidToken,
    TokenRequestError,
    ValidationProblem,
    problem_response,
)
from mlapi.extensions import jwt, limiter
from mlapi.limits import config_limit
from mlapi.observability import count_auth_failure
from mlapi.openapi import describe
from mlapi.schemas import Message, Problem, TokenForm, TokenProblem, TokenResponse, UserOut

bp = Blueprint("auth", __name__)

ALLOWED_HEADERS = frozenset({"alg", "typ"})
REQUIRED_CLAIMS = frozenset({"sub", "exp", "iat", "jti", "type", "sid", "sexp", "tkey"})
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
    return f"login-user:{request.form.get('username', '')}"


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


def required_fields(*names):
    """The named form fields, all non-empty, or a 422 problem naming the missing ones."""
    missing = [name for name in names if not request.form.get(name)]
    if missing:
        raise ValidationProblem(
            f"Missing form field(s): {', '.join(missing)}.",
            [{"pointer": f"/{name}", "detail": "required", "type": "missing"} for name in missing],
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
    lifetime = min(access_seconds(current_app.config), remaining)
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


def access_seconds(config):
    """The access token lifetime in whole seconds (MLAPI_ACCESS_TOKEN_MINUTES may be fractional)."""
    return max(1, round(config["ACCESS_TOKEN_MINUTES"] * 60))


@bp.get("/users/me")
@jwt_required()
@describe(resp=Response(HTTP_200=UserOut, HTTP_401=Problem), tags=["auth"], security={"bearer": []})
def read_users_me():
    """The authenticated user's profile."""
    return current_user.to_public()


def admin_required(view):
    """Allow only users whose role, read from the database on this request, is admin."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if not current_user.is_admin:
            count_auth_failure("insufficient_scope")
            raise InsufficientScope("This endpoint requires the admin role.")
        return view(*args, **kwargs)

    return wrapper


def _invalid(reason, detail):
    count_auth_failure(reason)
    return problem_response(InvalidToken(detail))


def init_app(app):
    app.config.setdefault("JWT_SECRET_KEY", app.config["SECRET_KEY"])
    app.config["JWT_ALGORITHM"] = "HS256"
    app.config["JWT_DECODE_ALGORITHMS"] = ["HS256"]
    app.config["JWT_TOKEN_LOCATION"] = ["headers"]
    # No cookies, so no CSRF claim: a shorter token is cheaper to parse on every request.
    app.config["JWT_COOKIE_CSRF_PROTECT"] = False
    app.config.setdefault("JWT_ACCESS_TOKEN_EXPIRES", timedelta(seconds=access_seconds(app.config)))
    app.config.setdefault("JWT_REFRESH_TOKEN_EXPIRES", app.config["REFRESH_TOKEN_DAYS"] * 86400)
    jwt.init_app(app)
    app.wsgi_app = BearerSchemeNormalizer(app.wsgi_app)
    app.register_blueprint(bp)


class BearerSchemeNormalizer:
    """RFC 7235 auth schemes are case-insensitive; flask-jwt-extended matches "Bearer" exactly."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, rest = header.partition(" ")
        if scheme != "Bearer" and scheme.lower() == "bearer":
            environ["HTTP_AUTHORIZATION"] = "Bearer " + rest.strip()
        return self.wsgi_app(environ, start_response)


@jwt.token_in_blocklist_loader
def is_revoked(_header, data):
    """Read the session's revocation and, in the same query, the token's user."""
    sid = data.get("sid")
    if sid is None:
        return True
    g.principal, revoked = users.load_principal(data["sub"], sid)
    return revoked


@jwt.user_lookup_loader
def load_user(_header, data):
    """The token's user, read by the revocation check; None if it no longer accepts the token."""
    if "principal" in g:
        user = g.pop("principal")
    else:
        user, _ = users.load_principal(data["sub"], data.get("sid"))
    if not users.accepts(user, data):
        return None
    request.environ["mlapi.user"] = user.username
    current_app.extensions["mlapi.active_users"].touch(user.username)
    return user


@jwt.token_verification_loader
def verify_token_shape(header, data):
    """Refuse tokens with headers we never issue (kid, jku, jwk, crit, ...) or without exp."""
    return (
        set(header) <= ALLOWED_HEADERS
        and header.get("alg") == "HS256"
        and set(data) >= REQUIRED_CLAIMS
    )


@jwt.unauthorized_loader
def missing_token(_reason):
    count_auth_failure("missing_token")
    return problem_response(
        Unauthorized("Not authenticated: send 'Authorization: Bearer <token>'.")
    )


@jwt.invalid_token_loader
def invalid_token(_reason):
    return _invalid("invalid_token", "The bearer token is malformed or its signature is invalid.")


@jwt.expired_token_loader
def expired_token(_header, _data):
    return _invalid("expired_token", "The bearer token has expired.")


@jwt.revoked_token_loader
def revoked_token(_header, _data):
    return _invalid("revoked_token", "The bearer token has been revoked.")


@jwt.token_verification_failed_loader
def unverifiable_token(_header, _data):
    return _invalid("invalid_token", "The bearer token is not one this service issues.")


@jwt.user_lookup_error_loader
def inactive_user(_header, _data):
    return _invalid(
        "inactive_user",
        "The user of this token no longer exists, is disabled, or changed their password.",
    )


@jwt.needs_fresh_token_loader
def stale_token(_header, _data):
    return _invalid("stale_token", "This action needs a fresh login.")
