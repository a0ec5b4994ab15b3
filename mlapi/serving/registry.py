"""The model registry: every prediction in mlapi goes through here.

Views validate input, call :meth:`ModelRegistry.predict` (or its one-row and
list-of-rows forms), and shape the response.
"""

import time

import numpy as np

from mlapi.serving.errors import ModelLoadError, ModelNotFound
from mlapi.serving.models import BUILTINS


class ModelRegistry:
    def __init__(self, models=BUILTINS, observe=None):
        """``observe(model, seconds)``, when given, is told each prediction's latency."""
        self._models = {}
        self.observe = observe
        for model in models:
            self.register(model)

    def register(self, model):
        versions = self._models.setdefault(model.name, {})
        existing = versions.get(model.version)
        if existing is not None:
            raise ModelLoadError(
                f"{model.source}: model {model.name}:{model.version} is already loaded "
                f"from {existing.source}."
            )
        versions[model.version] = model

    def get(self, name, version=None):
        """The model ``name`` at ``version`` (default: its highest); ModelNotFound if absent."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(name)
        if version is None:
            return versions[max(versions, key=_version_key)]
        if version not in versions:
            raise ModelNotFound(f"{name}:{version}")
        return versions[version]

    def versions(self, name):
        """The versions of model ``name``, lowest first; ModelNotFound if absent."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(name)
        return sorted(versions, key=_version_key)

    def __iter__(self):
        for versions in self._models.values():
            yield from versions.values()

    def predict(self, name, batch, version=None):
        """Run model ``name`` on a 2-D batch, recording its latency; return the model and values."""
        model = self.get(name, version)
        started = time.perf_counter()
        values = model.predict(batch)
        if self.observe:
            self.observe(model, time.perf_counter() - started)
        return model, values

    def predict_one(self, name, features):
        """Predict for one feature vector; returns (model, float)."""
        model, values = self.predict(name, np.asarray(features, dtype=np.float64).reshape(1, -1))
        return model, float(values[0])

    def predict_rows(self, name, rows):
        """Predict for a list of equal-length feature vectors in one call; returns (model, floats).

        A single vector is a batch of one row: both take this same path, so a row's
        prediction does not depend on the batch it came in.
        """
        batch = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
        model, values = self.predict(name, batch)
        return model, values.tolist()


def _version_key(version):
    """Numeric parts compare as numbers and sort before text parts: 1.2 < 1.10 < 1.a."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.split("."))
