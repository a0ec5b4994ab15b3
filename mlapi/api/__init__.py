"""The HTTP API: the tutorial's root endpoints and the v1 and v2 blueprints."""

from mlapi.api import root, v1, v2


def init_app(app):
    app.register_blueprint(root.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v2.bp)
