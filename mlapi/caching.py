"""The prediction cache.

Only a model's output is cached, keyed by a digest of the validated features
and the model's name and version: two users sending the same features share
the computation, never each other's response. A cache that fails (Redis down)
is a miss, never an error.
"""

import hashlib
import json
import logging
import math

import numpy as np
from cachelib.serializers import BaseSerializer
from flask import current_app
from flask_caching.backends import RedisCache
from werkzeug.exceptions import ServiceUnavailable

from mlapi import models
from mlapi.extensions import cache
from mlapi.observability import count_cache
from mlapi.redis_client import client_options

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


def cache_key(model, features):
    """``prediction:<model>:<version>:<sha256 of the float64 features>``."""
    data = np.ascontiguousarray(features, dtype=np.float64).tobytes()
    return f"prediction:{model.name}:{model.version}:{hashlib.sha256(data).hexdigest()}"


def cached_predict(name, features):
    """Predict with model ``name``, through the cache; returns (model, value, was_cached)."""
    model = models.registry().get(name)
    key = cache_key(model, features)
    try:
        value = _through_breaker(cache.get, key)
    except Exception:
        log.warning("prediction cache unavailable; computing without it", exc_info=True)
        count_cache("error")
        return model, models.predict_one(name, features)[1], False
    if isinstance(value, float):
        count_cache("hit")
        return model, value, True
    count_cache("miss")
    _, value = models.predict_one(name, features)
    try:
        _through_breaker(cache.set, key, value)
    except Exception:
        log.warning("could not store a prediction in the cache", exc_info=True)
        count_cache("error")
    return model, value, False


def _through_breaker(fn, *args):
    """Call the cache, skipping a Redis that failed moments ago."""
    breaker = current_app.extensions.get("mlapi.redis_breaker")
    return breaker.call(fn, *args) if breaker else fn(*args)


def invalidate(name, features):
    """Drop the cached prediction of model ``name`` for these features.

    Unlike a lookup, a failed delete cannot fall back: the caller is told to retry (503).
    """
    model = models.registry().get(name)
    try:
        _through_breaker(cache.delete, cache_key(model, features))
    except Exception:
        log.warning("prediction cache unavailable; nothing invalidated", exc_info=True)
        raise ServiceUnavailable(
            "The prediction cache is unavailable; retry shortly.",
            retry_after=math.ceil(current_app.config["REDIS_RETRY_SECONDS"]),
        ) from None


def init_app(app):
    config = app.config
    config.setdefault("CACHE_DEFAULT_TIMEOUT", config["CACHE_TIMEOUT"])
    if config.get("REDIS_URL"):
        config.setdefault("CACHE_TYPE", "mlapi.caching.JSONRedisCache")
        config.setdefault("CACHE_REDIS_URL", config["REDIS_URL"])
        config.setdefault("CACHE_KEY_PREFIX", config["REDIS_KEY_PREFIX"] + "cache:")
        config.setdefault("CACHE_OPTIONS", client_options(config))
    else:
        config.setdefault("CACHE_TYPE", "SimpleCache")
        config.setdefault("CACHE_THRESHOLD", 10_000)
    cache.init_app(app)
