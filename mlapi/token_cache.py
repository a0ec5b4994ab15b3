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
"""

import threading
import time

import jwt as pyjwt
from flask import current_app
from flask_jwt_extended import utils, view_decorators
from flask_jwt_extended.config import config
from flask_jwt_extended.default_callbacks import default_decode_key_callback
from flask_jwt_extended.exceptions import JWTDecodeError

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
    return current_app.extensions.get("mlapi.verified_tokens")


def _still_valid(claims):
    """The time claims, checked on every request as PyJWT checks them."""
    now = time.time()
    leeway = config.leeway
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


def unverified_header(encoded_token):
    """``get_unverified_jwt_headers``: a kept token's header, else the library's answer."""
    tokens = _tokens()
    entry = tokens.get(encoded_token) if tokens is not None else None
    if entry is not None:
        return dict(entry[0])
    return library_unverified_header(encoded_token)


library_unverified_header = utils.get_unverified_jwt_headers


def init_app(app, manager):
    """Keep this app's verified tokens; route the manager's decoding through them (once)."""
    app.extensions["mlapi.verified_tokens"] = VerifiedTokens()
    if not isinstance(manager._decode_jwt_from_config, SingleParseDecoder):
        manager._decode_jwt_from_config = SingleParseDecoder(
            manager, manager._decode_jwt_from_config
        )
        view_decorators.get_unverified_jwt_headers = unverified_header
