"""Build a registry snapshot from ``MLAPI_MODEL_DIR``: the repository, flat files, built-ins.

A model or version that cannot be loaded is recorded with its reason and every other
model is served: a broken file never takes the server down. A version whose folder
has not changed since the previous snapshot keeps its loaded model (an ONNX session
is not rebuilt for every poll).
"""

import logging
import os
from dataclasses import dataclass, replace

from mlapi.serving import repository
from mlapi.serving.errors import ModelLoadError, PredictionError
from mlapi.serving.loading import MODEL_SUFFIXES, PICKLE_SUFFIXES, load_file
from mlapi.serving.models import BUILTIN_NAMES, BUILTINS
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

    def predict(self, batch):
        raise PredictionError(
            f"Model {self.name!r} takes named tensors: call POST /v2/models/{self.name}/infer."
        )


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
        _check_declared_inputs(plan.path, runtime, config)
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
    return replace(
        model,
        name=name,
        version=plan.version,
        description=config.description or model.description,
        max_batch_size=config.max_batch_size,
    )


def _check_declared_inputs(path, runtime, config):
    """config.json's ``inputs``, when given, must agree with the graph's own."""
    for declared in config.inputs or ():
        spec = next((spec for spec in runtime.inputs if spec.name == declared.name), None)
        if spec is None:
            names = ", ".join(spec.name for spec in runtime.inputs)
            raise ModelLoadError(
                f"{path}: config.json declares input {declared.name!r}; the graph's are {names}"
            )
        if declared.datatype is not None and declared.datatype != spec.datatype:
            raise ModelLoadError(
                f"{path}: config.json declares input {declared.name!r} as {declared.datatype}; "
                f"the graph takes {spec.datatype}"
            )


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
