"""gunicorn's own logs as JSON lines: its error log, and one access line per request.

The access line carries what the app put in the WSGI environ (request id, route
template, authenticated user, and the trace and span ids when tracing is on), so it can be joined with the app's log lines.
Probes and scrapes are logged at debug level, never at info on every poll.
"""

import logging

from gunicorn.glogging import Logger

from mlapi.observability.logs import json_formatter

QUIET_ROUTES = ("/health/live", "/health/ready", "/health/metrics", "/metrics")


class JsonLogger(Logger):
    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(json_formatter())

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        route = environ.get("mlapi.route")
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        if not self.access_log.isEnabledFor(level):
            return
        status = resp.status_code
        fields = {
            "request_id": environ.get("mlapi.request_id"),
            "method": environ.get("REQUEST_METHOD"),
            "route": route,
            "path": environ.get("PATH_INFO"),
            "status": status,
            "duration": round(request_time.total_seconds(), 6),
            "bytes": getattr(resp, "sent", None),
            "client": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
        }
        user = environ.get("mlapi.user")
        if user:
            fields["user"] = user
        trace_id = environ.get("mlapi.trace_id")
        if trace_id:
            fields["trace_id"] = trace_id
            fields["span_id"] = environ.get("mlapi.span_id")
        message = f"{fields['method']} {fields['path']} {status}"
        try:
            self.access_log.log(level, message, extra=fields)
        except Exception:
            self.exception("could not write the access log line")
