"""The model registry: every prediction in mlapi goes through here.

Views validate input, call :meth:`ModelRegistry.predict` (or its one-row and
list-of-rows forms, or :meth:`ModelRegistry.get` then the model's ``infer``), and
shape the response.

The registry holds one immutable :class:`Snapshot` of the served models. A reload
builds a new snapshot and swaps it in with one assignment: a request that already
holds a model finishes on it, the next one sees the new snapshot.
"""

import time
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from mlapi.serving.errors import ModelLoadError, ModelNotFound
from mlapi.serving.models import BUILTINS
from mlapi.serving.repository import version_key


@dataclass(frozen=True)
class Snapshot:
    """The models served at one moment, and those that could not be loaded."""

    # name -> version -> model
    models: MappingProxyType
    # name -> label -> version
    labels: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # "name" or "name/version" -> why it is not served
    failures: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # the repository scan this snapshot was built from (None without a repository)
    scan: object = None
    # (name, version) -> the repository's VersionPlan each loaded version came from
    plans: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # what the poller compares to know whether to rebuild
    fingerprint: object = None
    loaded_at: float = field(default_factory=time.time)
    # name -> the model at its highest version (what a request without a version gets)
    latest: MappingProxyType = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        latest = {name: v[max(v, key=version_key)] for name, v in self.models.items() if v}
        object.__setattr__(self, "latest", MappingProxyType(latest))

    @classmethod
    def of(cls, models, **kwargs):
        """A snapshot of ``models``; ModelLoadError for a name and version given twice."""
        table = {}
        for model in models:
            versions = table.setdefault(model.name, {})
            existing = versions.get(model.version)
            if existing is not None:
                raise ModelLoadError(
                    f"{model.source}: model {model.name}:{model.version} is already loaded "
                    f"from {existing.source}."
                )
            versions[model.version] = model
        frozen = MappingProxyType({name: MappingProxyType(v) for name, v in table.items()})
        kwargs = {
            key: MappingProxyType(value) if isinstance(value, dict) else value
            for key, value in kwargs.items()
        }
        return cls(frozen, **kwargs)


class ModelRegistry:
    def __init__(self, models=BUILTINS, observe=None):
        """``observe(model, seconds, rows, ok)``, when given, is told each prediction."""
        self.snapshot = Snapshot.of(models)
        self.observe = observe

    def register(self, model):
        """Serve one more model (a new snapshot with it added)."""
        current = self.snapshot
        self.snapshot = Snapshot.of(
            [*self, model],
            labels=dict(current.labels),
            failures=dict(current.failures),
            plans=dict(current.plans),
            scan=current.scan,
            fingerprint=current.fingerprint,
        )

    def swap(self, snapshot):
        """Serve ``snapshot`` from now on; requests holding a model keep it."""
        self.snapshot = snapshot

    def get(self, name, version=None):
        """The model ``name`` at ``version`` or label (default: its highest); else ModelNotFound."""
        snapshot = self.snapshot
        if version is None:
            model = snapshot.latest.get(name)
            if model is None:
                raise ModelNotFound(name)
            return model
        versions = snapshot.models.get(name)
        if not versions:
            raise ModelNotFound(name)
        version = snapshot.labels.get(name, {}).get(version, version)
        if version not in versions:
            raise ModelNotFound(f"{name}:{version}")
        return versions[version]

    def versions(self, name):
        """The versions of model ``name``, lowest first; ModelNotFound if absent."""
        versions = self.snapshot.models.get(name)
        if not versions:
            raise ModelNotFound(name)
        return sorted(versions, key=version_key)

    def labels(self, name):
        """Label -> version of model ``name`` (empty when it has none)."""
        return dict(self.snapshot.labels.get(name, {}))

    def failure(self, name, version=None):
        """Why model ``name`` (at ``version``) is not served, or None if nothing is known."""
        failures = self.snapshot.failures
        if version is not None and f"{name}/{version}" in failures:
            return failures[f"{name}/{version}"]
        return failures.get(name)

    def __iter__(self):
        for versions in self.snapshot.models.values():
            yield from versions.values()

    def infer(self, model, inputs):
        """Run ``model`` (from :meth:`get`) on named tensors, observing its latency and rows."""
        started = time.perf_counter()
        ok = False
        try:
            outputs = model.infer(inputs)
            ok = True
            return outputs
        finally:
            if self.observe:
                rows = _rows(inputs)
                self.observe(model, time.perf_counter() - started, rows, ok)

    def predict(self, name, batch, version=None):
        """Run model ``name`` on a 2-D batch, recording its latency; return the model and values."""
        model = self.get(name, version)
        return model, self.run(model, batch)

    def predict_one(self, name, features):
        """Predict for one feature vector; returns (model, float)."""
        model, values = self.predict_rows(name, [features])
        return model, values[0]

    def predict_rows(self, name, rows):
        """Predict for a list of equal-length feature vectors in one call; returns (model, floats).

        A single vector is a batch of one row: a row's prediction does not depend on the
        batch it came in.
        """
        model = self.get(name)
        return model, self.run(model, rows, as_list=True)

    def run(self, model, rows, as_list=False):
        """``model``'s values for ``rows``, a 2-D batch (or with ``as_list`` a list of rows,
        answered as a list of floats), timed and observed. Every model call goes through
        here, and tracing makes it a span (mlapi/observability/tracing.py)."""
        started = time.perf_counter()
        ok = False
        try:
            values = _values_as_list(model, rows) if as_list else model.predict(rows)
            ok = True
        finally:
            if self.observe:
                self.observe(model, time.perf_counter() - started, len(rows), ok)
        return values


def _values_as_list(model, rows):
    """The values of a list of rows, as floats. A single row is computed without numpy
    where the model can (``Model.predict_row``, the same bits as its batch path)."""
    if len(rows) == 1:
        value = model.predict_row(rows[0])
        if value is not None:
            return [value]
    return model.predict(np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)).tolist()


def _rows(inputs):
    """The batch size of a request: the first dimension of its first input (1 for a vector)."""
    for array in inputs.values():
        return int(array.shape[0]) if getattr(array, "ndim", 0) > 1 else 1
    return 0
