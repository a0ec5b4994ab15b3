"""Authentication: bearer tokens verified on every request, and roles.

flask-jwt-extended verifies tokens; every one of its failure callbacks answers
here with a 401 problem and an RFC 6750 ``WWW-Authenticate`` challenge (its
default is a 422 ``{"msg"}``). The views that issue and revoke tokens are in
mlapi/api/tokens.py.
"""

from functools import wraps

from flask import g
from flask_jwt_extended import current_user, get_jwt
from flask_jwt_extended.config import config as jwt_config
from flask_jwt_extended.exceptions import (
    RevokedTokenError,
    UserClaimsVerificationError,
    UserLookupError,
    WrongTokenError,
)
from werkzeug.exceptions import Unauthorized

from mlapi import context, identity, token_cache, users
from mlapi.errors import InsufficientScope, InvalidToken, problem_response
from mlapi.extensions import jwt
from mlapi.observability.metrics import count_auth_failure

ALLOWED_HEADERS = frozenset({"alg", "typ"})
REQUIRED_CLAIMS = frozenset({"sub", "exp", "iat", "jti", "type", "sid", "sexp", "tkey"})
REVOKED = "The bearer token has been revoked."
INACTIVE = "The user of this token no longer exists, is disabled, or changed their password."
_UNREAD = object()  # no principal kept by the revocation check on this request


def token_required(view):
    """``@jwt_required()``: an access token, verified by :func:`token_cache.verify_request`
    (flask-jwt-extended's checks, without decoding a token this worker already verified)."""

    @wraps(view)
    def decorator(*args, **kwargs):
        token_cache.verify_request(admit if own_loaders() else None)
        return context.app().ensure_sync(view)(*args, **kwargs)

    return decorator


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
    jwt.init_app(app)
    # Each token verified once per worker, not parsed four times per request.
    token_cache.init_app(app, jwt)
    app.wsgi_app = BearerSchemeNormalizer(app.wsgi_app)


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
    """The session's revocation and the token's user: one SQL query, or the worker's
    cache of it while no user or revocation changed (mlapi/identity.py).

    On views under the prediction budget, the cache's generation is checked in the
    budget's Redis round trip (mlapi/budget.py), which calls :func:`recheck`.
    """
    req = context.current_request()
    return _revoked(data, _checks_generation_later(req), context.request_g())


def _revoked(data, deferred, request_g):
    sid = data.get("sid")
    if sid is None:
        return True

    def accepted(principal, revoked):
        return not revoked and users.accepts(principal, data)

    (request_g.principal, revoked), request_g.identity_stamp = identity.principals().lookup(
        data["sub"], sid, accepted, deferred=deferred
    )
    return revoked


def _checks_generation_later(req):
    view = context.app().view_functions.get(req.endpoint)
    return getattr(view, "checks_identity_generation", False)


def recheck(generation):
    """Read the request's user again from SQL; raise a 401 if the token is now refused."""
    data = get_jwt()
    principal, revoked = identity.principals().reload(data["sub"], data["sid"], generation)
    g.identity_stamp = None
    if revoked:
        count_auth_failure("revoked_token")
        raise InvalidToken(REVOKED)
    if not users.accepts(principal, data):
        count_auth_failure("inactive_user")
        raise InvalidToken(INACTIVE)


@jwt.user_lookup_loader
def load_user(_header, data):
    """The token's user, read by the revocation check; None if it no longer accepts the token."""
    req = context.current_request()
    return _user(data, _checks_generation_later(req), context.request_g(), req)


def _user(data, deferred, request_g, req):
    user = request_g.pop("principal", _UNREAD)  # read with the revocation check
    if user is _UNREAD:
        user, _ = users.load_principal(data["sub"], data.get("sid"))
    if not users.accepts(user, data):
        return None
    req.environ["mlapi.user"] = user.username
    active = context.app().extensions["mlapi.active_users"]
    # On budgeted views, the budget's round trip carries the activity write.
    request_g.active_user_write = active.touch(user.username, deferred=deferred)
    return user


def own_loaders():
    """Whether the revocation, claims and user loaders of flask-jwt-extended's manager are
    still mlapi's (then :func:`admit` may call them directly); private attributes of
    flask-jwt-extended 4.7.4, pinned in tests/unit/test_token_cache.py."""
    return (
        jwt._token_in_blocklist_callback is is_revoked
        and jwt._token_verification_callback is verify_token_shape
        and jwt._user_lookup_callback is load_user
    )


def admit(header, claims):
    """flask-jwt-extended 4.7.4's checks of a decoded access token, after the decode, for
    :func:`token_cache.verify_request`: in its order (``verify_token_type``,
    ``verify_token_not_blocklisted``, ``custom_verification_for_token``, ``_load_user``)
    and with its exceptions, which reach its error loaders as before; calling mlapi's
    loaders directly, with the request's context looked up once instead of in each of
    the library's steps. Returns what the library keeps as the request's user."""
    if claims["type"] == "refresh":
        raise WrongTokenError("Only non-refresh tokens are allowed")
    req = context.current_request()
    request_g = context.request_g()
    deferred = _checks_generation_later(req)
    if _revoked(claims, deferred, request_g):
        raise RevokedTokenError(header, claims)
    if not verify_token_shape(header, claims):
        raise UserClaimsVerificationError("User claims verification failed", header, claims)
    user = _user(claims, deferred, request_g, req)
    if user is None:
        identity_claim = claims[jwt_config.identity_claim_key]
        raise UserLookupError(f"user_lookup returned None for {identity_claim}", header, claims)
    return {"loaded_user": user}


def current_identity():
    """``get_jwt_identity()`` of an authenticated view: the verified token's identity
    claim, read where the token check keeps it (flask-jwt-extended's name for it in
    ``g``, pinned with the rest in tests/unit/test_token_cache.py) without the library's
    two proxy walks."""
    claim = context.app().config["JWT_IDENTITY_CLAIM"]
    return context.request_g()._jwt_extended_jwt[claim]


def current_username():
    """``current_user.username`` of an authenticated view: the name the user loader
    recorded for the logs, without the walk through flask-jwt-extended's proxy."""
    return context.current_request().environ["mlapi.user"]


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
    return _invalid("revoked_token", REVOKED)


@jwt.token_verification_failed_loader
def unverifiable_token(_header, _data):
    return _invalid("invalid_token", "The bearer token is not one this service issues.")


@jwt.user_lookup_error_loader
def inactive_user(_header, _data):
    return _invalid("inactive_user", INACTIVE)


@jwt.needs_fresh_token_loader
def stale_token(_header, _data):
    return _invalid("stale_token", "This action needs a fresh login.")
