"""Authentication: the OAuth2 password login, bearer tokens, and roles.

flask-jwt-extended verifies tokens; every one of its failure callbacks answers
here with a 401 problem and an RFC 6750 ``WWW-Authenticate`` challenge (its
default is a 422 ``{"msg"}``).
"""

from functools import wraps

from flask import Blueprint, current_app, request
from flask_jwt_extended import create_access_token, current_user, jwt_required
from spectree import Response
from werkzeug.exceptions import BadRequest, Unauthorized

from mlapi import users
from mlapi.errors import InsufficientScope, InvalidToken, problem_response
from mlapi.extensions import jwt, spec
from mlapi.observability import count_auth_failure
from mlapi.schemas import LoginForm, Problem, TokenResponse, UserOut

bp = Blueprint("auth", __name__)

ALLOWED_HEADERS = frozenset({"alg", "typ"})


@bp.post("/token")
@spec.validate(
    form=LoginForm,
    resp=Response(HTTP_200=TokenResponse, HTTP_401=Problem, HTTP_429=Problem),
    tags=["auth"],
    skip_validation=True,
)
def login():
    """OAuth2 password login: exchange a username and password for a bearer token."""
    if request.mimetype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise BadRequest("Send username and password as an HTML form (OAuth2 password grant).")
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    user = users.authenticate(username, password)
    if user is None:
        count_auth_failure("bad_credentials")
        raise Unauthorized("Incorrect username or password")
    minutes = current_app.config["ACCESS_TOKEN_MINUTES"]
    token = create_access_token(identity=user.username, additional_claims={"role": user.role})
    body = {"access_token": token, "token_type": "bearer", "expires_in": minutes * 60}
    return body, 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}


@bp.get("/users/me")
@jwt_required()
@spec.validate(
    resp=Response(HTTP_200=UserOut, HTTP_401=Problem),
    tags=["auth"],
    security={"bearer": []},
    skip_validation=True,
)
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
    app.config.setdefault("JWT_ACCESS_TOKEN_EXPIRES", app.config["ACCESS_TOKEN_MINUTES"] * 60)
    app.config.setdefault("JWT_REFRESH_TOKEN_EXPIRES", app.config["REFRESH_TOKEN_DAYS"] * 86400)
    jwt.init_app(app)
    app.register_blueprint(bp)


@jwt.user_lookup_loader
def load_user(_header, data):
    user = users.active_user(data["sub"])
    if user is not None:
        request.environ["mlapi.user"] = user.username
        current_app.extensions["mlapi.active_users"].touch(user.username)
    return user


@jwt.token_verification_loader
def verify_token_shape(header, data):
    """Refuse tokens with headers we never issue (kid, jku, jwk, crit, ...) or without exp."""
    return set(header) <= ALLOWED_HEADERS and header.get("alg") == "HS256" and "exp" in data


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
    return _invalid("inactive_user", "The user of this token no longer exists or is disabled.")


@jwt.needs_fresh_token_loader
def stale_token(_header, _data):
    return _invalid("stale_token", "This action needs a fresh login.")
