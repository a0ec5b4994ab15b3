"""The HTTP API: the tutorial's root endpoints, the v1 and v2 blueprints, and the
Open Inference Protocol routes under /v2."""

from mlapi.api import inference, root, v1, v2


def init_app(app):
    app.register_blueprint(root.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(inference.bp)
