"""The prediction cache.

Only a model's output is cached, keyed by a digest of the validated features
and the model's name and version: two users sending the same features share
the computation, never each other's response. A cache that fails (Redis down)
is a miss, never an error.
"""

import hashlib
import logging
import struct

import numpy as np

from mlapi.serving.errors import CacheUnavailable

log = logging.getLogger(__name__)


def cache_key(model, features):
    """``prediction:<model>:<version>:<sha256 of the float64 features>``: the bytes of
    numpy's native float64 array, packed by ``struct`` for a list of numbers (the same
    bytes, without numpy's per-call overhead)."""
    if isinstance(features, list):
        data = struct.pack(f"={len(features)}d", *features)
    else:
        data = np.ascontiguousarray(features, dtype=np.float64).tobytes()
    return f"prediction:{model.name}:{model.version}:{hashlib.sha256(data).hexdigest()}"


NOT_READ = object()


class Lookup:
    """One request's lookup: the model, the key of its features, and the stored value
    once something read it on the way (``prefetched``, None for nothing stored), so the
    view neither computes the key again nor reads the store a second time."""

    __slots__ = ("model", "key", "prefetched")

    def __init__(self, model, key):
        self.model = model
        self.key = key
        self.prefetched = NOT_READ


class PredictionCache:
    """Predictions of a registry through a store with ``get``, ``set``, ``delete`` and
    ``decode`` (of a stored value read elsewhere).

    ``count(outcome)`` is told "hit", "miss" or "error" for each lookup.
    """

    def __init__(self, registry, store, count=lambda outcome: None):
        self.registry = registry
        self.store = store
        self.count = count

    def predict(self, name, features, lookup=None):
        """Predict with model ``name``, through the cache; returns (model, value, was_cached).

        ``lookup``, when given, is the :class:`Lookup` of these features; the value
        computed on a miss is its model's, so it is the one the key names.
        """
        if lookup is None:
            lookup = Lookup(self.registry.get(name), None)
        model, key = lookup.model, lookup.key or cache_key(lookup.model, features)
        try:
            if lookup.prefetched is NOT_READ:
                value = self.store.get(key)
            else:
                value = self.store.decode(lookup.prefetched)
        except Exception:
            log.warning("prediction cache unavailable; computing without it", exc_info=True)
            self.count("error")
            return model, self._compute(model, features), False
        if isinstance(value, float):
            self.count("hit")
            return model, value, True
        self.count("miss")
        value = self._compute(model, features)
        try:
            self.store.set(key, value)
        except Exception:
            log.warning("could not store a prediction in the cache", exc_info=True)
            self.count("error")
        return model, value, False

    def _compute(self, model, features):
        return self.registry.run(model, [features], as_list=True)[0]

    def invalidate(self, name, features):
        """Drop the cached prediction of model ``name`` for these features.

        A lookup can fall back to computing; a failed delete cannot: it raises
        :class:`CacheUnavailable`, so the caller learns nothing was invalidated.
        """
        key = cache_key(self.registry.get(name), features)
        try:
            self.store.delete(key)
        except Exception as exc:
            log.warning("prediction cache unavailable; nothing invalidated", exc_info=True)
            raise CacheUnavailable("The prediction cache is unavailable; retry shortly.") from exc
