"""gunicorn's own logs as JSON lines: its error log, and one access line per request.

The access line carries what the app put in the WSGI environ (request id, route
template, authenticated user, and the trace and span ids when tracing is on), so it can be joined with the app's log lines.
Probes and scrapes are logged at debug level, never at info on every poll.
"""

import json
import logging
import time

from gunicorn.glogging import Logger

from mlapi.observability.logs import json_formatter

QUIET_ROUTES = ("/health/live", "/health/ready", "/health/metrics", "/metrics")


class JsonLineFormatter(logging.Formatter):
    """The access line arrives as JSON already (built with one ``json.dumps``)."""

    def format(self, record):
        return record.msg


class JsonLogger(Logger):
    # The access line's time, formatted once per second (as gunicorn's own access log
    # formats its date), as (second, text).
    _now = (None, "")

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(json_formatter())
        for handler in self.access_log.handlers:
            handler.setFormatter(JsonLineFormatter())

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        route = environ.get("mlapi.route")
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        if not self.access_log.isEnabledFor(level):
            return
        # gunicorn's own error answers (a 400 for a malformed head) set only resp.status.
        status = getattr(resp, "status_code", None) or int(str(resp.status).split(None, 1)[0])
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        second = int(time.time())
        if self._now[0] != second:
            self._now = (second, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second)))
        fields = {
            # The keys and order of the app's JSON lines (mlapi/observability/logs.py).
            "time": self._now[1],
            "level": logging.getLevelName(level),
            "logger": self.access_log.name,
            "message": f"{method} {path} {status}",
            "request_id": environ.get("mlapi.request_id"),
            "method": method,
            "route": route,
            "path": path,
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
        log = self.access_log
        try:
            # Logger.log without its search of the stack for the caller: the line is JSON
            # already and names no source line.
            log.handle(
                log.makeRecord(log.name, level, "(unknown file)", 0, json.dumps(fields), None, None)
            )
        except Exception:
            self.exception("could not write the access log line")
