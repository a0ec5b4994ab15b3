"""Strict JSON in and out.

Python's json module accepts ``NaN`` and ``Infinity``, turns ``1e400`` into
``inf``, recurses on deep nesting, and writes bare ``NaN``. Bodies are parsed
here so that non-finite numbers reach validation (a 422 that names them), deep
nesting is a 400, and a body that is not JSON is never silently treated as empty.
Responses are written with ``allow_nan=False``.
"""

import json
from io import BytesIO

from flask import Request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import (
    BadRequest,
    ClientDisconnected,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)

from mlapi import context

COMPACT = {"separators": (",", ":")}


class StrictJSONProvider(DefaultJSONProvider):
    sort_keys = False
    compact = True

    def __init__(self, app):
        super().__init__(app)
        self._encoders = {}

    def dumps(self, obj, **kwargs):
        if not kwargs or kwargs == COMPACT:  # every response: one encoder, built once
            return self._encoder().encode(obj)
        kwargs.setdefault("allow_nan", False)
        kwargs.setdefault("separators", (",", ":"))
        return super().dumps(obj, **kwargs)

    def _encoder(self):
        """The strict, compact encoder of the current ``ensure_ascii`` and ``sort_keys``
        (attributes an app may change): ``json.dumps`` builds a new one on every call."""
        options = (self.ensure_ascii, self.sort_keys)
        encoder = self._encoders.get(options)
        if encoder is None:
            encoder = json.JSONEncoder(
                default=self.default,
                ensure_ascii=self.ensure_ascii,
                sort_keys=self.sort_keys,
                allow_nan=False,
                separators=(",", ":"),
            )
            self._encoders[options] = encoder
        return encoder

    def loads(self, s, **kwargs):
        try:
            return json.loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nesting is too deep") from None


class StrictRequest(Request):
    """A request whose JSON body is parsed strictly even when asked silently.

    Libraries that call ``get_json(silent=True)`` would otherwise see a malformed
    body or a form post as "no body"; here they get a 400 or 415 like everyone else.
    """

    def get_json(self, force=False, silent=False, cache=True):
        return super().get_json(force=force, silent=False, cache=cache)

    def get_data(self, cache=True, as_text=False, parse_form_data=False):
        """The body; a chunked body over MAX_CONTENT_LENGTH is a 413, not silently cut short.

        werkzeug enforces the limit on a Content-Length, but reads a chunked body only up
        to the limit and stops there. A body of a given length, the usual one, is read
        in one call of the server's input (see :meth:`_read_sized`).
        """
        if cache and not as_text and not parse_form_data and self._cached_data is None:
            data = self._read_sized()
            if data is not None:
                return data
        data = super().get_data(cache, as_text, parse_form_data)
        limit = self.max_content_length
        if (
            self.content_length is None
            and limit is not None
            and len(data) >= limit
            and self.environ["wsgi.input"].read(1)
        ):
            raise RequestEntityTooLarge()
        return data

    _cached_data = None

    def _read_sized(self):
        """A body with a Content-Length (and no Transfer-Encoding), read with one call of
        ``wsgi.input``, with werkzeug's rules: over ``max_content_length`` is a 413, fewer
        bytes than announced a 400 (ClientDisconnected). None when another rule applies
        (chunked, no length, the stream already opened): werkzeug's own path then reads it.
        """
        environ = self.environ
        length = environ.get("CONTENT_LENGTH")
        if (
            not length
            or not length.isdigit()
            or not length.isascii()
            or "HTTP_TRANSFER_ENCODING" in environ
            or "stream" in self.__dict__
        ):
            return None
        length = int(length)
        # ``max_content_length`` without Flask's two proxy walks: the request's own
        # (Flask keeps it as _max_content_length, pinned), else the app's.
        limit = self._max_content_length
        if limit is None:
            limit = context.app().config["MAX_CONTENT_LENGTH"]
        if limit is not None and length > limit:
            raise RequestEntityTooLarge()
        data = environ["wsgi.input"].read(length) if length else b""
        if len(data) < length:
            raise ClientDisconnected()
        self._cached_data = data
        self.__dict__["stream"] = BytesIO()  # read: as werkzeug leaves a stream it read
        return data

    def on_json_loading_failed(self, e):
        if e is None:
            raise UnsupportedMediaType(
                "Send the body as JSON with 'Content-Type: application/json'."
            )
        raise BadRequest(f"The request body is not valid JSON: {e}")
