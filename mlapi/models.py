"""The model registry: every prediction in mlapi goes through here.

A model maps a 2-D float64 batch (rows x features) to one finite float per row.
Views validate input, call :func:`predict`, and shape the response.

Besides the built-in models, linear and logistic models are loaded at start from
the files in ``MLAPI_MODEL_DIR``: JSON, or ``.npz`` read with ``allow_pickle=False``.
Pickle is never read: loading a pickle can run arbitrary code.
"""

import json
import logging
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from flask import current_app
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlapi.errors import ValidationProblem
from mlapi.secrets import ConfigurationError

log = logging.getLogger(__name__)

V2_WEIGHTS = (1.0, 1.5, 2.0, 0.5)

# Model names and versions appear in URLs (/v2/models/<name>/versions/<version>).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
MODEL_SUFFIXES = (".json", ".npz")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


@dataclass(frozen=True)
class Tensor:
    """A declared model input or output: ``-1`` in ``shape`` is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    feature_names: tuple[str, ...] | None = None

    def metadata(self):
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def describe(self):
        """One line for people: ``features FP64 [-1, 3] (age, income, tenure)``."""
        names = f" ({', '.join(self.feature_names)})" if self.feature_names else ""
        return f"{self.name} {self.datatype} {list(self.shape)}{names}"


ANY_FEATURES = Tensor("features", "FP64", (-1, -1))
ONE_PER_ROW = Tensor("prediction", "FP64", (-1,))


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    description: str
    predict_fn: Callable[[np.ndarray], np.ndarray]
    max_features: int | None = None
    metadata: dict = field(default_factory=dict)
    input_tensor: Tensor = ANY_FEATURES
    output_tensor: Tensor = ONE_PER_ROW
    kind: str = "builtin"
    source: str = "built-in"

    @property
    def n_features(self):
        """The exact number of features the model takes, or None when it varies."""
        width = self.input_tensor.shape[-1]
        return None if width == -1 else width

    def predict(self, batch):
        """Predict one value per row of ``batch``; every value is finite, or this raises a 422."""
        width = batch.shape[1]
        if self.n_features is not None and width != self.n_features:
            raise _feature_count_problem(self, f"exactly {self.n_features}", width)
        if self.max_features is not None and width > self.max_features:
            raise _feature_count_problem(self, f"at most {self.max_features}", width)
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.asarray(self.predict_fn(batch), dtype=np.float64)
        if values.shape != (batch.shape[0],):
            raise RuntimeError(
                f"model {self.name}:{self.version} returned shape {values.shape} "
                f"for a batch of {batch.shape[0]} rows"
            )
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValidationProblem(
                f"Model {self.name!r} cannot compute a finite prediction for "
                f"{'this input' if batch.shape[0] == 1 else f'row {bad[0]}'}: "
                "the result overflows the range of a float.",
                [
                    {
                        "pointer": "/",
                        "detail": f"row {row}: prediction overflows",
                        "type": "overflow",
                    }
                    for row in bad[:100].tolist()
                ],
            )
        return values


def _feature_count_problem(model, bound, width):
    kind = "too_short" if model.n_features is not None and width < model.n_features else "too_long"
    return ValidationProblem(
        f"Model {model.name!r} accepts {bound} features, got {width}.",
        [{"pointer": "/", "detail": f"{bound} items", "type": kind}],
    )


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


def linear(batch, weights, bias):
    """``x . w + b`` per row.

    An element-wise product summed along each row, not a matrix product: BLAS
    sums in an order that depends on the batch size, so a row would not get
    the same bits alone and in a batch. Overflow gives inf, which
    :meth:`Model.predict` refuses.
    """
    return np.sum(batch * weights, axis=1) + bias


def sigmoid(z):
    """The logistic function without overflow: exp only ever sees a non-positive number."""
    out = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    ez = np.exp(z[~positive])
    out[~positive] = ez / (1.0 + ez)
    return out


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
BUILTIN_NAMES = frozenset(model.name for model in BUILTINS)


# --- model files -------------------------------------------------------------------


class ModelLoadError(ConfigurationError):
    """A model file cannot be loaded; the message names the file."""


FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class LinearModelFile(BaseModel):
    """The contents of a model file, JSON or ``.npz``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    kind: Literal["linear", "logistic"]
    weights: Annotated[list[FiniteFloat], Field(min_length=1)]
    bias: FiniteFloat
    feature_names: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = None
    description: Annotated[str, Field(max_length=500)] | None = None

    @model_validator(mode="after")
    def check_names(self):
        names = self.feature_names
        if names is not None:
            if len(names) != len(self.weights):
                raise ValueError(
                    f"feature_names has {len(names)} names for {len(self.weights)} weights"
                )
            if len(set(names)) != len(names):
                raise ValueError("feature_names must be unique")
        if self.name in BUILTIN_NAMES:
            raise ValueError(f"the name {self.name!r} is reserved for a built-in model")
        return self


def load_file(path, max_features=None):
    """Load one model file (``.json`` or ``.npz``); raise ModelLoadError naming the file."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path}: pickle-based files are refused, since loading one can run arbitrary "
            "code. Save the model as .json or as .npz without object arrays."
        )
    if suffix not in MODEL_SUFFIXES:
        raise ModelLoadError(f"{path}: unknown model format; use .json or .npz.")
    try:
        raw = _read_json(path) if suffix == ".json" else _read_npz(path)
        spec = LinearModelFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)[:5]
        )
        raise ModelLoadError(f"{path}: invalid model file: {problems}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{path}: cannot read model file: {exc}") from None
    if max_features is not None and len(spec.weights) > max_features:
        raise ModelLoadError(
            f"{path}: the model takes {len(spec.weights)} features, more than "
            f"MLAPI_MAX_FEATURES ({max_features})."
        )
    return _build(spec, path)


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle, parse_constant=_refuse_constant)
    if not isinstance(raw, dict):
        raise ValueError("the file must hold one JSON object")
    return raw


def _refuse_constant(name):
    raise ValueError(f"{name} is not a finite number")


def _read_npz(path):
    """The arrays of an .npz as plain Python values, refusing object (pickled) arrays."""
    raw = {}
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive (np.savez writes one)")
    with archive:
        for key in archive.files:
            array = archive[key]
            if key in ("weights", "feature_names"):
                if array.ndim != 1:
                    raise ValueError(f"{key} must be a 1-D array, got shape {array.shape}")
            elif array.size != 1:
                raise ValueError(f"{key} must hold a single value, got shape {array.shape}")
            if key == "weights" and array.dtype.kind not in "fiu":
                raise ValueError(f"weights must be numbers, got dtype {array.dtype}")
            raw[key] = array.tolist() if array.ndim else array.item()
            if key in ("name", "version", "kind", "bias", "description") and array.ndim:
                raw[key] = raw[key][0]
    if "weights" in raw:
        raw["weights"] = [float(w) for w in raw["weights"]]
    if isinstance(raw.get("bias"), int | np.integer):
        raw["bias"] = float(raw["bias"])
    return raw


def _build(spec, path):
    weights = np.asarray(spec.weights, dtype=np.float64)
    bias = float(spec.bias)
    if spec.kind == "linear":

        def predict_fn(batch):
            return linear(batch, weights, bias)

        default_description = "Linear model: x . w + b."
    else:

        def predict_fn(batch):
            return sigmoid(linear(batch, weights, bias))

        default_description = "Logistic model: sigmoid(x . w + b)."
    names = tuple(spec.feature_names) if spec.feature_names else None
    return Model(
        spec.name,
        spec.version,
        spec.description or default_description,
        predict_fn,
        input_tensor=Tensor("features", "FP64", (-1, len(weights)), names),
        kind=spec.kind,
        source=path,
    )


def load_dir(directory, max_features=None):
    """Every model file in ``directory``, sorted by file name; other files are skipped."""
    if not os.path.isdir(directory):
        raise ModelLoadError(f"MLAPI_MODEL_DIR {directory!r} is not a directory.")
    loaded = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        suffix = os.path.splitext(entry.name)[1].lower()
        if suffix in MODEL_SUFFIXES or suffix in PICKLE_SUFFIXES:
            loaded.append(load_file(entry.path, max_features))
        else:
            log.warning("skipping %s: not a model file (.json or .npz)", entry.path)
    return loaded


# --- the registry ------------------------------------------------------------------


class ModelRegistry:
    def __init__(self, models=BUILTINS):
        self._models = {}
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
        """The model ``name`` at ``version`` (default: its highest); KeyError if absent."""
        versions = self._models.get(name)
        if not versions:
            raise KeyError(name)
        if version is None:
            return versions[max(versions, key=_version_key)]
        return versions[version]

    def versions(self, name):
        """The versions of model ``name``, lowest first; KeyError if absent."""
        versions = self._models.get(name)
        if not versions:
            raise KeyError(name)
        return sorted(versions, key=_version_key)

    def __iter__(self):
        for versions in self._models.values():
            yield from versions.values()


def _version_key(version):
    """Numeric parts compare as numbers and sort before text parts: 1.2 < 1.10 < 1.a."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.split("."))


def registry():
    return current_app.extensions["mlapi.models"]


def predict(name, batch, version=None):
    """Run model ``name`` on a 2-D batch, recording its latency; return the model and values."""
    model = registry().get(name, version)
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


def predict_rows(name, rows):
    """Predict for a list of equal-length feature vectors in one call; returns (model, floats).

    A single vector is a batch of one row: both take this same path, so a row's
    prediction does not depend on the batch it came in.
    """
    model, values = predict(name, np.asarray(rows, dtype=np.float64).reshape(len(rows), -1))
    return model, values.tolist()


def init_app(app):
    models = ModelRegistry()
    directory = app.config.get("MODEL_DIR")
    if directory:
        for model in load_dir(directory, app.config["MAX_FEATURES"]):
            models.register(model)
            log.info("loaded model %s:%s from %s", model.name, model.version, model.source)
    app.extensions["mlapi.models"] = models
