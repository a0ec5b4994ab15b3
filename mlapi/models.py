"""The model registry: every prediction in mlapi goes through here.

A model maps a 2-D float64 batch (rows x features) to one float per row.
Views validate input, call :func:`predict`, and shape the response.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flask import current_app

from mlapi.errors import ValidationProblem

V2_WEIGHTS = (1.0, 1.5, 2.0, 0.5)


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    description: str
    predict_fn: Callable[[np.ndarray], np.ndarray]
    max_features: int | None = None
    metadata: dict = field(default_factory=dict)

    def predict(self, batch):
        """Predict one value per row of ``batch``; every value is finite."""
        if self.max_features is not None and batch.shape[1] > self.max_features:
            raise ValidationProblem(
                f"Model {self.name!r} accepts at most {self.max_features} features, "
                f"got {batch.shape[1]}.",
                [
                    {
                        "pointer": "/",
                        "detail": f"at most {self.max_features} items",
                        "type": "too_long",
                    }
                ],
            )
        return self.predict_fn(batch)


def safe_average(batch, weights=None):
    """Row-wise (weighted) mean that never overflows for finite input.

    A naive sum of large finite values overflows to infinity; rows where that
    happens are recomputed scaled by their largest magnitude, which bounds the
    result by that magnitude.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.average(batch, axis=1, weights=weights)
    bad = ~np.isfinite(out)
    if bad.any():
        rows = batch[bad]
        scale = np.max(np.abs(rows), axis=1)
        out[bad] = np.average(rows / scale[:, None], axis=1, weights=weights) * scale
    return out


def weights_for(n_features):
    """The v2 weights, cut to the number of features."""
    return list(V2_WEIGHTS[:n_features])


def weighted_average(batch):
    return safe_average(batch, weights=weights_for(batch.shape[1]))


BUILTINS = (
    Model("average", "1.0", "Arithmetic mean of the features (the v1 method).", safe_average),
    Model(
        "weighted_average",
        "2.0",
        "Mean weighted by [1.0, 1.5, 2.0, 0.5] cut to the number of features (the v2 method).",
        weighted_average,
        max_features=len(V2_WEIGHTS),
    ),
)


class ModelRegistry:
    def __init__(self, models=BUILTINS):
        self._models = {}
        for model in models:
            self.register(model)

    def register(self, model):
        self._models.setdefault(model.name, {})[model.version] = model

    def get(self, name, version=None):
        versions = self._models.get(name)
        if not versions:
            raise KeyError(name)
        if version is None:
            return versions[max(versions, key=_version_key)]
        return versions[version]

    def __iter__(self):
        for versions in self._models.values():
            yield from versions.values()


def _version_key(version):
    return tuple(int(p) if p.isdigit() else p for p in version.split("."))


def registry():
    return current_app.extensions["mlapi.models"]


def predict(name, batch):
    """Run model ``name`` on a 2-D batch, recording its latency; return the model and values."""
    model = registry().get(name)
    started = time.perf_counter()
    values = model.predict(batch)
    observe = current_app.extensions.get("mlapi.observe_model")
    if observe:
        observe(model, time.perf_counter() - started)
    return model, values


def predict_one(name, features):
    """Predict for one feature vector; returns (model, float)."""
    model, values = predict(name, np.asarray(features, dtype=np.float64).reshape(1, -1))
    return model, float(values[0])


def init_app(app):
    app.extensions["mlapi.models"] = ModelRegistry()
