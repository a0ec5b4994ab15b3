"""Build a registry snapshot from ``MLAPI_MODEL_DIR``: the repository, flat files, built-ins.

A model or version that cannot be loaded is recorded with its reason and every other
model is served: a broken file never takes the server down. A version whose folder
has not changed since the previous snapshot keeps its loaded model (an ONNX session
is not rebuilt for every poll).
"""

import logging
import os
from dataclasses import dataclass, replace

import numpy as np

from mlapi.serving import repository
from mlapi.serving.datatypes import NUMPY_DTYPES
from mlapi.serving.errors import ModelLoadError, PredictionError, error_item
from mlapi.serving.loading import MODEL_SUFFIXES, PICKLE_SUFFIXES, load_file
from mlapi.serving.models import BUILTIN_NAMES, BUILTINS, feature_count_problem
from mlapi.serving.onnx import load_onnx
from mlapi.serving.registry import Snapshot

log = logging.getLogger(__name__)

UNLOADED = "unloaded by an administrator; POST /v2/repository/models/{name}/load serves it again"


@dataclass(frozen=True)
class LoadSettings:
    max_features: int | None = None
    onnx_threads: int = 1


@dataclass(frozen=True)
class GraphModel:
    """An ONNX graph served as model ``name`` at ``version``."""

    name: str
    version: str
    runtime: object
    description: str
    source: str
    max_batch_size: int | None = None
    kind = "onnx"

    @property
    def platform(self):
        return self.runtime.platform

    @property
    def inputs(self):
        return self.runtime.inputs

    @property
    def outputs(self):
        return self.runtime.outputs

    def infer(self, inputs):
        return self.runtime.predict(inputs)

    def predict_row(self, row):
        """A graph always takes its rows as an array (:meth:`predict`)."""
        return None

    def predict(self, batch):
        """Feature vectors (a float64 batch) in, one value per row out, for a regressor
        graph: one FP32 or FP64 input of shape [batch, features], and a first output of
        one value per row. Any other graph takes named tensors only."""
        spec = self._vector_input()
        if spec is None:
            raise PredictionError(
                f"Model {self.name!r} takes named tensors: call POST /v2/models/{self.name}/infer."
            )
        width = spec.shape[1]
        if width != -1 and batch.shape[1] != width:
            raise feature_count_problem(self.name, batch.shape[1], exactly=width)
        with np.errstate(over="ignore"):
            rows = batch.astype(NUMPY_DTYPES[spec.datatype])
        if not np.isfinite(rows).all():
            raise PredictionError(
                f"Model {self.name!r} takes {spec.datatype} features: a value is out of its range.",
                [error_item("/", f"finite {spec.datatype} values", "overflow")],
            )
        output = self.runtime.predict({spec.name: rows})[self.outputs[0].name]
        values = np.asarray(output, dtype=np.float64).reshape(len(batch), -1)
        if values.shape[1] != 1:
            raise PredictionError(
                f"Model {self.name!r} gives {values.shape[1]} values per row: "
                f"call POST /v2/models/{self.name}/infer."
            )
        values = values[:, 0]
        if not np.isfinite(values).all():
            raise PredictionError(
                f"Model {self.name!r} cannot compute a finite prediction for this input.",
                [error_item("/", "prediction is not finite", "overflow")],
            )
        return values

    def _vector_input(self):
        """The graph's one input when it takes rows of floating-point features, else None."""
        if len(self.inputs) != 1:
            return None
        spec = self.inputs[0]
        if spec.datatype not in ("FP32", "FP64") or len(spec.shape) != 2:
            return None
        return spec


def build(directory, settings, previous=None, unloaded=frozenset(), control=None):
    """The snapshot of built-ins plus everything ``directory`` holds (None: built-ins only).

    ModelLoadError only when ``directory`` is not a directory at all.
    """
    if not directory:
        return Snapshot.of(BUILTINS)
    scan = repository.scan(directory, reserved_names=BUILTIN_NAMES)
    models, failures, plans, labels = list(BUILTINS), dict(scan.errors), {}, {}
    taken = set(BUILTIN_NAMES)
    for name, plan in scan.models.items():
        if name in unloaded:
            failures[name] = UNLOADED.format(name=name)
            continue
        served = []
        for version in plan.versions:
            try:
                model = _reuse(previous, name, version) or load_version(
                    name, version, plan.config, settings
                )
            except ModelLoadError as exc:
                failures[f"{name}/{version.version}"] = str(exc)
                continue
            served.append(model)
            plans[(name, version.version)] = version
        if not served:
            reasons = [failures[f"{name}/{v.version}"] for v in plan.versions]
            failures[name] = f"no version can be served: {'; '.join(reasons)}"
            continue
        taken.add(name)
        models.extend(served)
        loaded = {model.version for model in served}
        labels[name] = {k: v for k, v in plan.labels.items() if v in loaded}
    models.extend(_flat_files(scan.flat_files, settings, taken, failures, unloaded))
    # Reasons reach clients (model readiness): name files from the repository's root.
    for root in {os.path.join(os.path.abspath(directory), ""), os.path.join(directory, "")}:
        failures = {key: reason.replace(root, "") for key, reason in failures.items()}
    return Snapshot.of(
        models,
        labels=labels,
        failures=failures,
        plans=plans,
        scan=scan,
        fingerprint=(scan.fingerprint, control),
    )


def _reuse(previous, name, version):
    """The model ``previous`` loaded from the same, unchanged version folder, if any."""
    if previous is None or previous.plans.get((name, version.version)) != version:
        return None
    return previous.models.get(name, {}).get(version.version)


def load_version(name, plan, config, settings):
    """Load one version of a repository model, served as ``name``:``plan.version``."""
    if plan.platform == "onnx":
        runtime = load_onnx(plan.path, settings.onnx_threads)
        runtime = runtime.renamed(served_input_names(plan.path, runtime.inputs, config))
        return GraphModel(
            name,
            plan.version,
            runtime,
            config.description or f"ONNX model {name}",
            plan.path,
            config.max_batch_size,
        )
    # The folders name a repository model; the file's own name and version are ignored.
    model = load_file(plan.path, settings.max_features)
    (served,) = served_input_names(plan.path, model.inputs, config)
    return replace(
        model,
        name=name,
        version=plan.version,
        description=config.description or model.description,
        max_batch_size=config.max_batch_size,
        input_tensor=replace(model.input_tensor, name=served),
        input_alias=model.input_tensor.name if served != model.input_tensor.name else None,
    )


def served_input_names(path, specs, config):
    """The names to serve the file's inputs (``specs``) under, in order, from config.json.

    Declarations that use the file's own names only check them (any subset, any order).
    Otherwise config.json names every input, in the file's order: each is served under
    its declared name, and the file's own name stays an alias. ModelLoadError where the
    declarations and the file disagree.
    """
    declared = config.inputs or ()
    own = [spec.name for spec in specs]
    if all(declaration.name in own for declaration in declared):
        pairs = [(d, specs[own.index(d.name)]) for d in declared]
        names = own
    elif len(declared) == len(specs):
        pairs = list(zip(declared, specs, strict=True))
        names = [declaration.name for declaration in declared]
    else:
        raise ModelLoadError(
            f"{path}: config.json declares inputs {_listed(d.name for d in declared)}; the "
            f"file's are {_listed(own)}. To rename them, declare all {len(own)}, in that order."
        )
    for declaration, spec in pairs:
        if declaration.datatype is not None and declaration.datatype != spec.datatype:
            raise ModelLoadError(
                f"{path}: config.json declares input {declaration.name!r} as "
                f"{declaration.datatype}; the file's {spec.name!r} is {spec.datatype}"
            )
    return tuple(names)


def _listed(names):
    return ", ".join(repr(name) for name in names)


def _flat_files(paths, settings, taken, failures, unloaded):
    """The models of files at the top of the folder: mlapi's layout before the repository."""
    models = []
    for path in paths:
        filename = os.path.basename(path)
        suffix = os.path.splitext(filename)[1].lower()
        if suffix not in MODEL_SUFFIXES and suffix not in PICKLE_SUFFIXES:
            log.warning("skipping %s: not a model file (.json or .npz)", path)
            continue
        try:
            model = load_file(path, settings.max_features)
        except ModelLoadError as exc:
            failures[filename] = str(exc)
            log.warning("model file %s not served: %s", path, exc)
            continue
        if model.name in unloaded:
            failures[model.name] = UNLOADED.format(name=model.name)
            continue
        clash = next(
            (m for m in models if (m.name, m.version) == (model.name, model.version)), None
        )
        if clash is not None:
            failures[filename] = (
                f"{path}: model {model.name}:{model.version} is already loaded from {clash.source}"
            )
            continue
        if model.name in taken and not any(m.name == model.name for m in models):
            failures[filename] = f"{path}: the name {model.name!r} is served from a folder"
            continue
        models.append(model)
        taken.add(model.name)
    return models
