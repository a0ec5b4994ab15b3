"""The Flask side of serving: the app's model registry and prediction cache.

mlapi/serving knows nothing of Flask; this binds one registry (built-in models and
the files of MLAPI_MODEL_DIR) and one prediction cache to each app.
"""

import json
import logging

from cachelib.serializers import BaseSerializer
from flask import current_app, g
from flask_caching.backends import RedisCache
from flask_jwt_extended import current_user

from mlapi.extensions import cache
from mlapi.observability.metrics import count_cache, count_prediction, observe_model
from mlapi.serving.cache import PredictionCache
from mlapi.serving.loading import load_dir
from mlapi.serving.registry import ModelRegistry

log = logging.getLogger(__name__)


class JSONSerializer(BaseSerializer):
    """Cache values as JSON: a writable Redis must not be a way to unpickle code here."""

    def dumps(self, value, protocol=None):
        return json.dumps(value).encode()

    def loads(self, bvalue):
        if bvalue is None:
            return None
        try:
            return json.loads(bvalue)
        except ValueError:
            return None


class JSONRedisCache(RedisCache):
    serializer = JSONSerializer()

    @classmethod
    def factory(cls, app, config, args, kwargs):
        """On the app's one Redis client (mlapi/redis_client.py), not a pool of its own."""
        shared = app.extensions.get("mlapi.redis")
        if shared is None:
            return super().factory(app, config, args, kwargs)
        kwargs.update(host=shared, key_prefix=config.get("CACHE_KEY_PREFIX") or "")
        return cls(*args, **kwargs)


class GuardedStore:
    """The flask-caching cache, skipping a Redis that failed moments ago (see redis_client)."""

    def __init__(self, breaker):
        self.breaker = breaker

    def _call(self, fn, *args):
        return self.breaker.call(fn, *args) if self.breaker else fn(*args)

    def get(self, key):
        prefetched = g.get("prefetched_cache")
        if prefetched and key in prefetched:  # read with the budget (mlapi/budget.py)
            return JSONSerializer().loads(prefetched.pop(key))
        return self._call(cache.get, key)

    def set(self, key, value):
        return self._call(cache.set, key, value)

    def delete(self, key):
        # An invalidation is an admin's explicit request: a failing cache is reported
        # to them, not skipped.
        return cache.delete(key)


def registry():
    """The app's model registry."""
    return current_app.extensions["mlapi.models"]


def prediction_cache():
    """The app's prediction cache."""
    return current_app.extensions["mlapi.prediction_cache"]


def predict_one(name, features, version="unversioned"):
    """Model ``name``'s prediction for one vector, counted for the request's user."""
    model, value = registry().predict_one(name, features)
    count_prediction(model, current_user.username, version=version)
    return value


def predict_rows(name, rows, version):
    """Model ``name``'s predictions for a list of rows, counted for the request's user."""
    model, values = registry().predict_rows(name, rows)
    count_prediction(model, current_user.username, version=version, rows=len(rows))
    return values


def init_app(app):
    models = ModelRegistry(observe=observe_model)
    directory = app.config.get("MODEL_DIR")
    if directory:
        for model in load_dir(directory, app.config["MAX_FEATURES"]):
            models.register(model)
            log.info("loaded model %s:%s from %s", model.name, model.version, model.source)
    app.extensions["mlapi.models"] = models
    cache.init_app(app)
    store = GuardedStore(app.extensions.get("mlapi.redis_breaker"))
    app.extensions["mlapi.prediction_cache"] = PredictionCache(models, store, count_cache)
