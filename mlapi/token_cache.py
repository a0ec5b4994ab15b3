"""Verify a bearer token once per worker, not four times per request.

flask-jwt-extended 4.7.4 parses a token four times per protected request over PyJWT
(two unverified parses, the verified decode, and the header again), each with a
per-character check of the base64 alphabet. There is no public hook to replace its
decoder, so this overrides two private names, pinned in requirements.txt and checked
by tests/unit/test_token_cache.py:

- ``JWTManager._decode_jwt_from_config``: decoded with one ``jwt.decode_complete``,
  and the result of a successful verification kept per worker and app, keyed by the
  raw token (bounded). ``exp``, ``nbf`` and ``iat`` are checked on every request; a token that
  fails is never kept, and every failure goes through the library's own decoder, so
  its errors and error loaders are unchanged.
- ``flask_jwt_extended.view_decorators.get_unverified_jwt_headers``: the header of a
  kept token comes from the same entry.

Everything else (blocklist, user lookup, token type, freshness, claims verification,
``current_user``) is flask-jwt-extended's, as before.

:func:`verify_request` is ``verify_jwt_in_request()`` for views that take an access token:
a token this worker already verified, sent the one way the library would read it, goes
straight to the library's own checks, in its order, and is kept where it keeps it. Any
other request is the library's from the start.
"""

import threading
import time

import jwt as pyjwt
from flask_jwt_extended import internal_utils, utils, view_decorators
from flask_jwt_extended.config import config
from flask_jwt_extended.default_callbacks import default_decode_key_callback
from flask_jwt_extended.exceptions import JWTDecodeError

from mlapi import context

MAX_TOKENS = 4096


class VerifiedTokens:
    """Tokens whose signature and claims verified, by raw token: (header, claims).

    One per app (each app has its own secret), in ``app.extensions``.
    """

    def __init__(self, max_tokens=MAX_TOKENS):
        self.max_tokens = max_tokens
        self._tokens = {}
        self._lock = threading.Lock()

    def get(self, encoded_token):
        entry = self._tokens.get(encoded_token)
        if entry is not None and _still_valid(entry[1]):
            return entry
        return None

    def keep(self, encoded_token, header, claims):
        with self._lock:
            if len(self._tokens) >= self.max_tokens:
                self._tokens.clear()
            self._tokens[encoded_token] = (header, claims)


def _tokens():
    return context.app().extensions.get("mlapi.verified_tokens")


def _still_valid(claims):
    """The time claims, checked on every request as PyJWT checks them."""
    now = time.time()
    leeway = context.app().config["JWT_DECODE_LEEWAY"]  # flask-jwt-extended's config.leeway
    if "exp" in claims and claims["exp"] <= now - leeway:
        return False
    if "nbf" in claims and claims["nbf"] > now + leeway:
        return False
    return not ("iat" in claims and claims["iat"] > now + leeway)


def _verify(encoded_token):
    """One verified parse, with the options flask-jwt-extended's ``_decode_jwt`` uses."""
    complete = pyjwt.decode_complete(
        encoded_token,
        config.decode_key,
        algorithms=config.decode_algorithms,
        audience=config.decode_audience,
        issuer=config.decode_issuer,
        leeway=config.leeway,
        options={
            "verify_aud": config.decode_audience is not None,
            "verify_sub": config.verify_sub,
        },
    )
    claims = complete["payload"]
    if config.identity_claim_key not in claims:
        raise JWTDecodeError(f"Missing claim: {config.identity_claim_key}")
    claims.setdefault("type", "access")
    claims.setdefault("fresh", False)
    claims.setdefault("jti", None)
    return complete["header"], claims


class SingleParseDecoder:
    """Replaces ``JWTManager._decode_jwt_from_config`` of one manager."""

    def __init__(self, manager, library_decode):
        self.manager = manager
        self.library_decode = library_decode

    def __call__(self, encoded_token, csrf_value=None, allow_expired=False):
        tokens = _tokens()
        simple = (
            tokens is not None
            and not csrf_value
            and not allow_expired
            and self.manager._decode_key_callback is default_decode_key_callback
        )
        if not simple:
            return self.library_decode(encoded_token, csrf_value, allow_expired)
        entry = tokens.get(encoded_token)
        if entry is not None:
            return dict(entry[1])
        try:
            header, claims = _verify(encoded_token)
        except Exception:
            # The library decodes it again and raises exactly what it raises.
            return self.library_decode(encoded_token, csrf_value, allow_expired)
        tokens.keep(encoded_token, header, claims)
        return dict(claims)


# The only token location and header form :func:`kept_bearer` reads itself.
HEADERS_ONLY = ("headers", ["headers"], ("headers",))


def kept_bearer():
    """The (header, claims) of the request's bearer token when this worker verified it
    before and its time claims still hold; None for anything else.

    Only where flask-jwt-extended reads tokens from ``Authorization: Bearer <token>``
    alone, and with its own decode key: then a kept token, which is a well-formed JWT
    (base64url and dots, no space or comma), is the one the library would extract from
    this header, and the one its decoder (:class:`SingleParseDecoder`) would return.
    """
    app = context.app()
    req = context.current_request()
    settings = app.config
    if (
        req.method in config.exempt_methods
        or settings["JWT_TOKEN_LOCATION"] not in HEADERS_ONLY
        or settings["JWT_HEADER_NAME"] != "Authorization"
        or settings["JWT_HEADER_TYPE"] != "Bearer"
    ):
        return None
    tokens = app.extensions.get("mlapi.verified_tokens")
    manager = app.extensions["flask-jwt-extended"]
    raw = req.environ.get("HTTP_AUTHORIZATION", "")
    if (
        tokens is None
        or not raw.startswith("Bearer ")
        or manager._decode_key_callback is not default_decode_key_callback
    ):
        return None
    entry = tokens.get(raw[7:])
    return None if entry is None else (dict(entry[0]), dict(entry[1]))


def verify_request(admit=None):
    """``verify_jwt_in_request()`` (an access token, not fresh, revocation checked).

    For a kept token (:func:`kept_bearer`) it runs the rest of the library's function:
    the same checks in the same order (token type, blocklist, claims verification, user
    lookup), which raise the library's own errors to its error loaders, then keeps the
    token, its header and its user in ``g`` under the library's names (private names of
    flask-jwt-extended 4.7, pinned; tests/unit/test_token_cache.py), where
    ``get_jwt()`` and ``current_user`` read them. What it skips is only finding the token
    and decoding it again. ``admit(header, claims)``, when given, runs those checks
    instead and returns the user entry (mlapi.auth.admit: the same checks, with mlapi's
    own loaders called directly).
    """
    kept = kept_bearer()
    if kept is None:
        library_verify()
        return
    header, claims = kept
    if admit is not None:
        user = admit(header, claims)
    else:
        internal_utils.verify_token_type(claims, refresh=False)
        internal_utils.verify_token_not_blocklisted(header, claims)
        internal_utils.custom_verification_for_token(header, claims)
        user = view_decorators._load_user(header, claims)
    request_g = context.request_g()
    request_g._jwt_extended_jwt_user = user
    request_g._jwt_extended_jwt_header = header
    request_g._jwt_extended_jwt = claims
    request_g._jwt_extended_jwt_location = "headers"


def unverified_header(encoded_token):
    """``get_unverified_jwt_headers``: a kept token's header, else the library's answer."""
    tokens = _tokens()
    entry = tokens.get(encoded_token) if tokens is not None else None
    if entry is not None:
        return dict(entry[0])
    return library_unverified_header(encoded_token)


library_unverified_header = utils.get_unverified_jwt_headers
# As imported, before tracing (mlapi/observability/tracing.py) wraps the module's name in a
# span: verify_request is wrapped itself, and must not make a second span when it falls back.
library_verify = view_decorators.verify_jwt_in_request


def init_app(app, manager):
    """Keep this app's verified tokens; route the manager's decoding through them (once)."""
    app.extensions["mlapi.verified_tokens"] = VerifiedTokens()
    if not isinstance(manager._decode_jwt_from_config, SingleParseDecoder):
        manager._decode_jwt_from_config = SingleParseDecoder(
            manager, manager._decode_jwt_from_config
        )
        view_decorators.get_unverified_jwt_headers = unverified_header
