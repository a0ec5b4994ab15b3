"""mlapi: machine learning predictions over HTTP."""

import logging
import os

from flask import Flask
from flask.sessions import SessionInterface

from config import Config

log = logging.getLogger(__name__)


def create_app(config=None, instance_path=None):
    """Build the application: configuration, extensions, blueprints, error handlers, CLI.

    ``config`` (a dict or an object with upper-case attributes) is applied last,
    over config.py's defaults and the ``MLAPI_*`` environment.
    """
    instance_path = instance_path or os.environ.get("MLAPI_INSTANCE_PATH")
    app = Flask(__name__, instance_path=instance_path and os.path.abspath(instance_path))
    configure(app, config)

    from mlapi import (
        api,
        auth,
        caching,
        cli,
        database,
        errors,
        health,
        limits,
        models,
        observability,
        openapi,
        redis_client,
        strict_json,
    )

    app.json = strict_json.StrictJSONProvider(app)
    app.request_class = strict_json.StrictRequest
    # A token API has no cookie session: skip building one on every request.
    app.session_interface = NoSessions()
    redis_client.init_app(app)
    observability.init_app(app)
    errors.init_app(app)
    database.init_app(app)
    models.init_app(app)
    limits.init_app(app)
    caching.init_app(app)
    auth.init_app(app)
    api.init_app(app)
    health.init_app(app)
    openapi.init_app(app)
    cli.init_app(app)
    return app


def configure(app, config):
    """Defaults from config.py, then ``MLAPI_*`` environment variables, then ``config``."""
    from mlapi.secrets import load_secret

    app.config.from_object(Config)
    app.config.from_prefixed_env("MLAPI")
    if isinstance(config, dict):
        app.config.from_mapping(config)
    elif config is not None:
        app.config.from_object(config)
    app.config["SECRET_KEY"] = load_secret(app)
    app.config.setdefault("SERVICE_NAME", "mlapi")


class NoSessions(SessionInterface):
    """Every request gets Flask's null session; nothing is ever read from or set in cookies."""

    def open_session(self, app, request):
        return None  # Flask then uses make_null_session()

    def save_session(self, app, session, response):
        pass
