"""JSON logs: one object per line on stdout, with the request's id, route and user."""

import logging
import sys

from flask import has_request_context, request
from pythonjsonlogger.json import JsonFormatter

from mlapi.observability.hooks import route


class RequestContextFilter(logging.Filter):
    """Add the request's id, method, route, user, client address and (when tracing) trace and
    span ids to every log record."""

    def filter(self, record):
        if has_request_context():
            record.request_id = request.environ.get("mlapi.request_id")
            record.method = request.method
            record.route = route()
            record.client = request.remote_addr
            user = request.environ.get("mlapi.user")
            if user:
                record.user = user
            trace_id = request.environ.get("mlapi.trace_id")
            if trace_id:
                record.trace_id = trace_id
                record.span_id = request.environ.get("mlapi.span_id")
        return True


def json_formatter():
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_logging(level):
    """One JSON object per line on stdout for every logger, at ``level``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "mlapi", False):
            root.removeHandler(existing)
    handler.mlapi = True
    root.addHandler(handler)
    root.setLevel(level)
    # Schema checks run at every start; their INFO lines are noise there.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
