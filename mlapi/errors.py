"""One error shape for the whole API: RFC 9457 problem details.

Code anywhere raises (``abort``, werkzeug exceptions, the problems below, the
serving errors of mlapi/serving/errors.py); the handlers registered here turn every
error into ``application/problem+json``, except on the Open Inference Protocol
routes: there :class:`ProtocolError` and the serving errors are rendered as that
protocol's ``{"error": "..."}``.
"""

import logging
import math

from flask import current_app, g, json, request
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    HTTPException,
    InternalServerError,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    UnprocessableEntity,
)

from mlapi import sql
from mlapi.serving.errors import (
    CacheUnavailable,
    InferenceError,
    ModelLoadError,
    ModelNotFound,
    PredictionError,
    error_item,
)

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"
# Blueprints of the Open Inference Protocol, whose clients read {"error": "..."}.
PROTOCOL_BLUEPRINTS = frozenset({"inference"})


class ValidationProblem(UnprocessableEntity):
    """The request was well-formed JSON but its content is not acceptable."""

    problem_type = "/problems/validation-error"

    def __init__(self, detail, errors=()):
        super().__init__(description=detail)
        self.errors = list(errors)


class InvalidToken(Unauthorized):
    """A bearer token was presented but is malformed, forged, expired or revoked."""

    problem_type = "/problems/invalid-token"
    bearer_error = "invalid_token"


class InsufficientScope(Forbidden):
    """The token is valid but its user lacks the role the endpoint needs."""

    problem_type = "/problems/insufficient-scope"
    bearer_error = "insufficient_scope"


class TokenRequestError(HTTPException):
    """A token request the server refuses, with its RFC 6749 §5.2 error code."""

    def __init__(self, error, detail, code=400):
        super().__init__(description=detail)
        self.code = code
        self.oauth_error = error


class ProtocolError(HTTPException):
    """An error on an Open Inference Protocol route, whose clients read ``{"error": "..."}``."""

    def __init__(self, detail, code=400):
        super().__init__(description=detail)
        self.code = code


def pointer(loc):
    """JSON Pointer (RFC 6901) into the request body for a validation error location."""
    return "/" + "/".join(str(part).replace("~", "~0").replace("/", "~1") for part in loc)


def from_pydantic(exc):
    """A pydantic ValidationError as ``{pointer, detail, type}`` error items."""
    return [
        error_item(pointer(err["loc"]), err["msg"], err["type"])
        for err in exc.errors(include_url=False, include_input=False)
    ]


def summary(errors):
    """One sentence naming the first error item and how many more there are."""
    first, count = errors[0], len(errors)
    where = f"at {first['pointer']}" if first["pointer"] != "/" else "in the body"
    more = f" (and {count - 1} more)" if count > 1 else ""
    return f"Invalid request body {where}: {first['detail']}{more}."


def invalid(errors):
    """A 422 problem for these error items, summarised by the first one."""
    return ValidationProblem(summary(errors), errors[:100])


def problem_response(exc):
    """Render an HTTPException as a problem+json response, keeping its headers."""
    status = exc.code or 500
    body = {
        "type": getattr(exc, "problem_type", "about:blank"),
        "title": exc.name,
        "status": status,
        "detail": exc.description,
    }
    errors = getattr(exc, "errors", None)
    if errors:
        body["errors"] = errors
    oauth_error = getattr(exc, "oauth_error", None)
    if oauth_error:
        body["error"] = oauth_error
        body["error_description"] = exc.description
    headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    if status != 429 and getattr(exc, "retry_after", None):
        g.retry_after = exc.retry_after
    if status == 401 or getattr(exc, "bearer_error", None):
        headers.append(("WWW-Authenticate", www_authenticate(exc)))
    if status == 429:
        headers.append(("Cache-Control", "no-store"))
    return current_app.response_class(
        json.dumps(body) + "\n", status=status, headers=headers, mimetype=PROBLEM_MIMETYPE
    )


def www_authenticate(exc):
    """The RFC 6750 challenge for a 401 or 403."""
    error = getattr(exc, "bearer_error", None)
    if not error:
        return 'Bearer realm="mlapi"'
    description = exc.description.replace("\\", "").replace('"', "'")
    return f'Bearer realm="mlapi", error="{error}", error_description="{description}"'


def handle_http_exception(exc):
    return problem_response(exc)


def handle_database_error(exc):
    """The database is down, locked or timing out: a fast 503, never a 401 or a 500."""
    log.error(
        "database unavailable on %s %s: %s", request.method, request.path, exc.__class__.__name__
    )
    return problem_response(
        ServiceUnavailable("The user database is unavailable; retry shortly.", retry_after=1)
    )


def handle_protocol_error(exc):
    return protocol_response(exc.description, exc.code)


def protocol_response(message, status):
    return current_app.response_class(
        json.dumps({"error": message}) + "\n", status=status, mimetype="application/json"
    )


def handle_cache_unavailable(exc):
    """Redis failed where no fallback is honest (an invalidation): 503, retry shortly."""
    retry = math.ceil(current_app.config["REDIS_RETRY_SECONDS"])
    return problem_response(ServiceUnavailable(str(exc), retry_after=retry))


def on_protocol_route():
    return request.blueprint in PROTOCOL_BLUEPRINTS


def handle_data_error(exc):
    """A value the database refuses (e.g. a NUL character): the client's input, a 400."""
    return problem_response(BadRequest("The request contains a value that cannot be stored."))


def validation_problem(exc):
    """The 422 problem for a PredictionError: the model cannot use the client's input."""
    return ValidationProblem(exc.detail, exc.errors)


def handle_prediction_error(exc):
    """A model cannot use the input: 400 ``{"error"}`` on protocol routes, else a 422 problem."""
    if isinstance(exc, InferenceError) and exc.log_detail:
        log.warning("inference refused on %s: %s", request.path, exc.log_detail)
    if on_protocol_route():
        return protocol_response(exc.detail, 400)
    return problem_response(validation_problem(exc))


def handle_model_not_found(exc):
    message = f"No model {exc.args[0]} is loaded."
    if on_protocol_route():
        return protocol_response(message, 404)
    return problem_response(NotFound(message))


def handle_model_load_error(exc):
    """A model an administrator asked to load cannot be: the reason, as a 400."""
    if on_protocol_route():
        return protocol_response(str(exc), 400)
    return problem_response(BadRequest(str(exc)))


def handle_unexpected(exc):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem_response(
        InternalServerError("The server failed to handle this request; it has been logged.")
    )


def init_app(app):
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(sql.Unavailable, handle_database_error)
    app.register_error_handler(sql.DataError, handle_data_error)
    app.register_error_handler(ProtocolError, handle_protocol_error)
    app.register_error_handler(PredictionError, handle_prediction_error)
    app.register_error_handler(ModelNotFound, handle_model_not_found)
    app.register_error_handler(CacheUnavailable, handle_cache_unavailable)
    app.register_error_handler(ModelLoadError, handle_model_load_error)
    app.register_error_handler(Exception, handle_unexpected)
