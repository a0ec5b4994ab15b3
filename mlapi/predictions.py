"""The Flask side of serving: the app's model registry and prediction cache.

mlapi/serving knows nothing of Flask; this binds one registry (built-in models and
the files of MLAPI_MODEL_DIR) and one prediction cache to each app.
"""

import json
import logging
import os
import re

from cachelib.serializers import BaseSerializer
from flask import current_app
from flask_caching.backends import RedisCache

from config import ConfigurationError
from mlapi import context
from mlapi.extensions import cache
from mlapi.observability.metrics import count_cache, count_prediction, observe_model
from mlapi.serving.cache import PredictionCache
from mlapi.serving.loader import LoadSettings
from mlapi.serving.registry import ModelRegistry
from mlapi.serving.reload import ControlUnavailable, FileControl, RedisControl, Reloader

log = logging.getLogger(__name__)

# A JSON number with a fraction or an exponent, which json.loads reads with float().
JSON_FLOAT = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)")


class JSONSerializer(BaseSerializer):
    """Cache values as JSON: a writable Redis must not be a way to unpickle code here."""

    def dumps(self, value, protocol=None):
        return json.dumps(value).encode()

    def loads(self, bvalue):
        if bvalue is None:
            return None
        if JSON_FLOAT.fullmatch(bvalue):  # a cached prediction: what json.loads does with it
            return float(bvalue)
        try:
            return json.loads(bvalue.decode())  # dumps wrote UTF-8 (RFC 8259's only encoding)
        except ValueError:
            return None


JSON_SERIALIZER = JSONSerializer()


class JSONRedisCache(RedisCache):
    serializer = JSON_SERIALIZER

    @classmethod
    def factory(cls, app, config, args, kwargs):
        """On the app's one Redis client (mlapi/redis_client.py), not a pool of its own."""
        shared = app.extensions.get("mlapi.redis")
        if shared is None:
            return super().factory(app, config, args, kwargs)
        kwargs.update(host=shared, key_prefix=config.get("CACHE_KEY_PREFIX") or "")
        return cls(*args, **kwargs)


class GuardedStore:
    """The flask-caching cache, skipping a Redis that failed moments ago (see redis_client).

    Reads and writes go to the app's backend (``cache.cache``, taken once): the
    ``Cache`` object's proxies find it again through ``current_app`` on every call.
    """

    def __init__(self, breaker, backend):
        self.breaker = breaker
        self.backend = backend

    def _call(self, fn, *args):
        return self.breaker.call(fn, *args) if self.breaker else fn(*args)

    def get(self, key):
        return self._call(self.backend.get, key)

    def decode(self, raw):
        """A stored value read by someone else (the budget's round trip, mlapi/budget.py)."""
        return JSON_SERIALIZER.loads(raw)

    def set(self, key, value):
        return self._call(self.backend.set, key, value)

    def delete(self, key):
        # An invalidation is an admin's explicit request: a failing cache is reported
        # to them, not skipped.
        return cache.delete(key)


def registry():
    """The app's model registry."""
    return context.app().extensions["mlapi.models"]


def reloader():
    """The app's model reloader (repository polling, load and unload)."""
    return current_app.extensions["mlapi.reloader"]


def prediction_cache():
    """The app's prediction cache."""
    return context.app().extensions["mlapi.prediction_cache"]


def predict_one(name, features, version="unversioned"):
    """Model ``name``'s prediction for one vector, counted for the request's user."""
    model, value = registry().predict_one(name, features)
    count_prediction(model, version=version)
    return value


def predict_rows(name, rows, version):
    """Model ``name``'s predictions for a list of rows, counted for the request's user."""
    model, values = registry().predict_rows(name, rows)
    count_prediction(model, version=version, rows=len(rows))
    return values


def init_app(app):
    models = ModelRegistry(observe=observe_model)
    models_reloader = Reloader(
        models, app.config.get("MODEL_DIR"), load_settings(app.config), model_control(app)
    )
    try:
        snapshot = models_reloader.reload()
    except ControlUnavailable as exc:
        log.warning(
            "model control state unavailable (%s): serving the whole repository until it is back",
            exc,
        )
        snapshot = models_reloader.reload(use_control=False)
    for key, reason in snapshot.failures.items():
        log.warning("model %s is not served: %s", key, reason)
    app.extensions["mlapi.models"] = models
    app.extensions["mlapi.reloader"] = models_reloader
    cache.init_app(app)
    with app.app_context():
        backend = cache.cache
    store = GuardedStore(app.extensions.get("mlapi.redis_breaker"), backend)
    app.extensions["mlapi.prediction_cache"] = PredictionCache(models, store, count_cache)


def model_control(app):
    """Where load and unload requests are kept: Redis when configured (every host sees
    them), else a file in the instance folder (every worker of this host)."""
    client = app.extensions.get("mlapi.redis")
    if client is not None:
        return RedisControl(client, app.config["REDIS_KEY_PREFIX"] + "models:control")
    return FileControl(os.path.join(app.instance_path, "model-control.json"))


def load_settings(config):
    threads, poll = config["ONNX_THREADS"], config["MODEL_POLL_SECONDS"]
    if type(threads) is not int or threads < 1:
        raise ConfigurationError(f"MLAPI_ONNX_THREADS must be a positive integer, got {threads!r}")
    if type(poll) not in (int, float) or poll < 0:
        raise ConfigurationError(
            f"MLAPI_MODEL_POLL_SECONDS must be a number of seconds >= 0, got {poll!r}"
        )
    return LoadSettings(config["MAX_FEATURES"], threads)


def start_polling(app):
    """Start this process's repository poller (gunicorn calls it in each worker, after fork)."""
    app.extensions["mlapi.reloader"].start(app.config["MODEL_POLL_SECONDS"])
