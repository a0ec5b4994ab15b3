"""Observability: JSON logs, request ids and timing, Prometheus metrics, active users."""

from prometheus_flask_exporter import PrometheusMetrics

from mlapi.observability import hooks
from mlapi.observability.active_users import ActiveUsers
from mlapi.observability.logs import configure_logging
from mlapi.observability.metrics import (
    MULTIPROCESS,
    ActiveUsersCollector,
    MultiprocessMetrics,
    register_collector,
)


def init_app(app):
    configure_logging(app.config["LOG_LEVEL"])
    exporter_class = MultiprocessMetrics if MULTIPROCESS else PrometheusMetrics
    exporter = exporter_class.for_app_factory(export_defaults=False)
    exporter.init_app(app)
    active = ActiveUsers(
        app.config["ACTIVE_USER_WINDOW_SECONDS"],
        redis=app.extensions.get("mlapi.redis"),
        breaker=app.extensions.get("mlapi.redis_breaker"),
        key=app.config["REDIS_KEY_PREFIX"] + "active_users",
    )
    app.extensions["mlapi.active_users"] = active
    register_collector(ActiveUsersCollector(active.count))
    hooks.init_app(app)
