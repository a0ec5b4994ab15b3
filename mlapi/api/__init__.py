"""The HTTP API: every blueprint, registered here, and the OpenAPI document.

Views are split by resource: tokens (login and sessions), health (probes), predict
(the tutorial's unversioned endpoints), v1 and v2 (versioned predictions), inference
(the Open Inference Protocol under /v2), docs (/openapi.json and /docs).
"""

from mlapi.api import docs, health, inference, predict, tokens, v1, v2

BLUEPRINTS = (
    tokens.bp,
    predict.bp,
    v1.bp,
    v2.bp,
    inference.bp,
    health.bp,
    docs.bp,
)


def init_app(app):
    health.init_app(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    docs.add_spectree_document(app)
