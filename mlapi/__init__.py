"""mlapi: machine learning predictions over HTTP."""

import logging
import os

from flask import Flask
from flask.sessions import SessionInterface

import config
from mlapi import (
    _hs256_only,  # noqa: F401 (first: PyJWT without cryptography)
    api,
    auth,
    budget,
    cli,
    cors,
    database,
    errors,
    identity,
    limits,
    observability,
    predictions,
    redis_client,
)
from mlapi.api import strict_json
from mlapi.observability import tracing
from mlapi.version import __version__  # noqa: F401 (mlapi.__version__)


def create_app(overrides=None, instance_path=None):
    """Build the application, in this order.

    ``overrides`` (a dict or an object with upper-case attributes) is applied last,
    over config.py's defaults and the ``MLAPI_*`` environment.
    """
    instance_path = instance_path or config.instance_path()
    app = App(__name__, instance_path=instance_path and os.path.abspath(instance_path))
    # Settings: defaults, environment, overrides; checked; the secret; library keys.
    config.configure(app, overrides)
    # Strict JSON in and out, and no cookie session.
    use_strict_json(app)
    # Shared Redis (when configured), logs, metrics and request hooks.
    redis_client.init_app(app)
    observability.init_app(app)
    log_settings_warnings(app)
    # One JSON error shape for every error.
    errors.init_app(app)
    # Browsers on other origins: off unless MLAPI_CORS_ORIGINS lists them.
    cors.init_app(app)
    # Users and revocations in SQL, migrated on start. (gunicorn's master waits a bounded
    # time for the database before any worker starts; the CLI answers at once.)
    database.init_app(app)
    # Each worker's cache of token users, re-read when users or revocations change.
    identity.init_app(app)
    # The model registry and the prediction cache.
    predictions.init_app(app)
    # Rate limits, then token verification.
    limits.init_app(app)
    budget.init_app(app)
    auth.init_app(app)
    # Every blueprint and the OpenAPI document.
    api.init_app(app)
    # flask users / db / models commands.
    cli.init_app(app)
    # Spans, when OTEL_* variables name an exporter: last, as it wraps the steps above.
    tracing.init_app(app)
    return app


class App(Flask):
    """Flask, deciding once per view or hook whether it is a coroutine function.

    Flask asks ``inspect.iscoroutinefunction`` of every view and hook on every request
    (``ensure_sync``, which Flask documents as the method to override); the answer never
    changes for a function, so it is kept.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._synced = {}

    def ensure_sync(self, func):
        try:
            return self._synced[func]
        except KeyError:
            synced = self._synced[func] = super().ensure_sync(func)
            return synced
        except TypeError:  # an unhashable callable
            return super().ensure_sync(func)


def log_settings_warnings(app):
    for warning in app.extensions.pop("mlapi.settings_warnings", []):
        logging.getLogger("mlapi.config").warning(warning)


def use_strict_json(app):
    app.json = strict_json.StrictJSONProvider(app)
    app.request_class = strict_json.StrictRequest
    # A token API has no cookie session: skip building one on every request.
    app.session_interface = NoSessions()


class NoSessions(SessionInterface):
    """Every request gets Flask's null session; nothing is ever read from or set in cookies."""

    def open_session(self, app, request):
        return None  # Flask then uses make_null_session()

    def save_session(self, app, session, response):
        pass
