"""Model files: linear and logistic models loaded at start from ``MLAPI_MODEL_DIR``.

JSON, or ``.npz`` read with ``allow_pickle=False``. Pickle is never read: loading a
pickle can run arbitrary code.
"""

import json
import logging
import os
import zipfile
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlapi.serving.errors import ModelLoadError
from mlapi.serving.models import BUILTIN_NAMES, FiniteNumber, Model, Tensor, linear, sigmoid

log = logging.getLogger(__name__)

# Model names and versions appear in URLs (/v2/models/<name>/versions/<version>).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
MODEL_SUFFIXES = (".json", ".npz")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


class LinearModelFile(BaseModel):
    """The contents of a model file, JSON or ``.npz``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    kind: Literal["linear", "logistic"]
    weights: Annotated[list[FiniteNumber], Field(min_length=1)]
    bias: FiniteNumber
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
