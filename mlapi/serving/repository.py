"""The model repository: what ``MLAPI_MODEL_DIR`` holds, and what should be loaded from it.

The layout is the one Triton and KServe users know::

    MLAPI_MODEL_DIR/
      churn/
        config.json          optional: version policy, labels, max batch size, inputs
        3/model.onnx
        4/model.onnx
        4/model.onnx.data    anything else in a version folder is data the model reads

:func:`scan` reads the tree and returns a :class:`RepositoryScan`: a plan per model
(which versions to load, from which file, with which settings) and a clear error for
each model or version that cannot be served. It raises for nothing inside the tree:
a broken model is reported, and the others load. :func:`fingerprint` is a cheap digest
of names, sizes and modification times, to poll for changes; :func:`changes` says
which versions to load and unload between two scans.

Hidden entries (a leading ``.``) are skipped everywhere, so a version copied in as
``.4`` and renamed to ``4`` when complete appears whole.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlapi.serving.datatypes import NUMPY_DTYPES
from mlapi.serving.errors import ModelConfigError, ModelLoadError

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 1 << 20
# Model names and versions appear in URLs (/v2/models/<name>/versions/<version>).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
# The platform of a model file, by suffix; config.json's "platform" picks one when a
# folder could hold several (an XGBoost booster is JSON too).
PLATFORMS = {".onnx": "onnx", ".json": "linear", ".npz": "linear"}
REFUSED = {
    ".pkl": "a pickle runs code of its author's choosing when loaded",
    ".pickle": "a pickle runs code of its author's choosing when loaded",
    ".joblib": "a joblib file is a pickle, which runs code when loaded",
    ".pt": "a PyTorch checkpoint is a pickle; export the module with torch.onnx.export",
    ".pth": "a PyTorch checkpoint is a pickle; export the module with torch.onnx.export",
    ".txt": "serve LightGBM boosters as ONNX: convert with onnxmltools.convert_lightgbm",
    ".ubj": "serve XGBoost boosters as ONNX: convert with onnxmltools.convert_xgboost",
}
SAFE_FORMATS = "ONNX (.onnx) or mlapi's linear models (.json, .npz)"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Version = Annotated[str, Field(pattern=VERSION_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Latest(_Strict):
    num_versions: Annotated[int, Field(ge=1)] = 1


class Specific(_Strict):
    versions: Annotated[list[Version], Field(min_length=1)]


class VersionPolicy(_Strict):
    """Triton's version policy: exactly one of ``latest``, ``all`` or ``specific``."""

    latest: Latest | None = None
    all: dict | None = None
    specific: Specific | None = None

    @model_validator(mode="after")
    def one_policy(self):
        chosen = [key for key in ("latest", "all", "specific") if getattr(self, key) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of latest, all or specific")
        if self.all:
            raise ValueError("all takes no settings: {}")
        return self

    def select(self, versions):
        """The versions this policy serves out of ``versions`` (sorted, lowest first)."""
        if self.all is not None:
            return list(versions)
        if self.latest is not None:
            return list(versions[-self.latest.num_versions :])
        return [v for v in versions if v in self.specific.versions]


class InputDeclaration(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    datatype: str | None = None
    shape: list[Annotated[int, Field(ge=-1)]] | None = None

    @model_validator(mode="after")
    def known_datatype(self):
        if self.datatype is not None and self.datatype not in NUMPY_DTYPES:
            raise ValueError(f"datatype must be one of {', '.join(NUMPY_DTYPES)}")
        return self


class ModelConfig(_Strict):
    """A model's ``config.json``; every key is optional."""

    version_policy: VersionPolicy = VersionPolicy(latest=Latest())
    labels: dict[Annotated[str, Field(pattern=VERSION_PATTERN)], Version] = {}
    max_batch_size: Annotated[int, Field(ge=1)] | None = None
    platform: str | None = None
    inputs: list[InputDeclaration] | None = None
    description: Annotated[str, Field(max_length=500)] | None = None

    @model_validator(mode="after")
    def consistent(self):
        if self.platform is not None and self.platform not in set(PLATFORMS.values()):
            raise ValueError(
                f"platform must be one of {', '.join(sorted(set(PLATFORMS.values())))}"
            )
        names = [declared.name for declared in self.inputs or ()]
        if len(set(names)) != len(names):
            raise ValueError("inputs must have unique names")
        return self


@dataclass(frozen=True)
class VersionPlan:
    """One version to load: its model file and a digest of its folder's files."""

    version: str
    path: str
    platform: str
    fingerprint: str


@dataclass(frozen=True)
class ModelPlan:
    """One model to serve: its settings and its versions, lowest first."""

    name: str
    config: ModelConfig
    versions: tuple[VersionPlan, ...]
    # label -> version, only for labels whose version is in ``versions``
    labels: dict[str, str] = field(default_factory=dict)

    def resolve(self, version_or_label=None):
        """The plan of a version or label (default: the highest version); KeyError if absent."""
        if version_or_label is None:
            return self.versions[-1]
        wanted = self.labels.get(version_or_label, version_or_label)
        for plan in self.versions:
            if plan.version == wanted:
                return plan
        raise KeyError(version_or_label)


@dataclass(frozen=True)
class RepositoryScan:
    models: dict[str, ModelPlan]
    # "name" or "name/version" -> why it is not served
    errors: dict[str, str]
    # files at the top level: the flat layout of model files mlapi read before
    flat_files: tuple[str, ...]
    fingerprint: str


@dataclass(frozen=True)
class Changes:
    load: tuple[tuple[str, VersionPlan], ...]
    unload: tuple[tuple[str, str], ...]
    # models whose config.json changed (labels, batch size), versions aside
    reconfigured: tuple[str, ...]


def scan(root, reserved_names=()):
    """Read the repository at ``root``; ModelLoadError only if ``root`` is no directory."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ModelLoadError(f"The model repository {root!r} is not a directory.")
    digest = fingerprint(root)
    models, errors, flat = {}, {}, []
    for entry in _entries(root):
        if not entry.is_dir():
            flat.append(entry.path)
            continue
        try:
            if not re.match(NAME_PATTERN, entry.name):
                raise ModelLoadError(
                    "a model name is 1-64 characters of A-Z a-z 0-9 _ . -, "
                    "starting with a letter or digit"
                )
            if entry.name in reserved_names:
                raise ModelLoadError(f"the name {entry.name!r} is reserved for a built-in model")
            plan = _plan_model(entry, errors)
        except ModelLoadError as exc:
            errors[entry.name] = f"{entry.path}: {exc}"
            continue
        except OSError as exc:  # unreadable folder, or removed while we read it
            errors[entry.name] = f"{entry.path}: cannot be read: {exc.strerror or exc}"
            continue
        models[plan.name] = plan
    return RepositoryScan(models, errors, tuple(flat), digest)


def _entries(folder):
    """The entries of ``folder`` that are not hidden, by name."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _plan_model(folder, errors):
    config = read_config(os.path.join(folder.path, CONFIG_FILE))
    entries = _entries(folder.path)
    version_folders = {}
    for entry in entries:
        if not entry.is_dir():
            suffix = os.path.splitext(entry.name)[1].lower()
            if entry.name != CONFIG_FILE and suffix in {*PLATFORMS, *REFUSED}:
                raise ModelLoadError(
                    f"the model file {entry.name} must sit in a version folder, "
                    f"e.g. {folder.name}/1/{entry.name}"
                )
            continue
        if re.match(VERSION_PATTERN, entry.name):
            version_folders[entry.name] = entry
        else:
            errors[f"{folder.name}/{entry.name}"] = (
                f"{entry.path}: not a version folder: a version is 1-32 characters of "
                "A-Z a-z 0-9 _ . -, starting with a letter or digit"
            )
    available = sorted(version_folders, key=version_key)
    policy = config.version_policy
    if policy.specific is not None:
        missing = [v for v in policy.specific.versions if v not in version_folders]
        if missing:
            raise ModelConfigError(
                f"version_policy.specific names version {missing[0]!r}, which has no folder"
            )
    selected = policy.select(available)
    if not selected:
        raise ModelLoadError("no version folder (e.g. 1/) holds a model")
    for label, version in config.labels.items():
        if version not in selected:
            raise ModelConfigError(
                f"labels: {label!r} names version {version!r}, which the version policy "
                f"does not serve (it serves {', '.join(selected)})"
            )
        if label in version_folders and label != version:
            raise ModelConfigError(f"labels: {label!r} is also the name of a version folder")
    plans, broken = [], {}
    for version in selected:
        try:
            plans.append(_plan_version(version_folders[version], config.platform))
        except ModelLoadError as exc:
            broken[f"{folder.name}/{version}"] = f"{version_folders[version].path}: {exc}"
    if not plans:
        raise ModelLoadError(f"no version can be served: {'; '.join(broken.values())}")
    errors.update(broken)
    loaded = {plan.version for plan in plans}
    labels = {label: version for label, version in config.labels.items() if version in loaded}
    return ModelPlan(folder.name, config, tuple(plans), labels)


def _plan_version(folder, platform):
    found, refused = [], []
    for entry in _entries(folder.path):
        suffix = os.path.splitext(entry.name)[1].lower()
        if not entry.is_file():
            continue
        if suffix in REFUSED:
            refused.append((entry.name, REFUSED[suffix]))
        elif suffix in PLATFORMS and platform in (None, PLATFORMS[suffix]):
            found.append(entry)
    if refused:
        name, reason = refused[0]
        raise ModelLoadError(f"{name} is refused: {reason}. Serve {SAFE_FORMATS}.")
    if not found:
        raise ModelLoadError(f"no model file: put one {SAFE_FORMATS} in the folder")
    if len(found) > 1:
        raise ModelLoadError(
            f"{len(found)} model files ({', '.join(e.name for e in found)}); keep one per version, or set "
            "platform in config.json"
        )
    path = found[0].path
    return VersionPlan(
        folder.name,
        path,
        PLATFORMS[os.path.splitext(path)[1].lower()],
        fingerprint(folder.path),
    )


def read_config(path):
    """The model's settings from ``path``, or the defaults if there is no such file."""
    if not os.path.lexists(path):
        return ModelConfig()
    if not os.path.isfile(path):  # a FIFO would block the scan; a folder is a mistake
        raise ModelConfigError(f"{CONFIG_FILE} is not a regular file")
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes")
        raw = json.loads(text, parse_constant=_refuse_constant)
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelConfigError(f"{CONFIG_FILE} is not readable JSON: {exc}") from None
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)[:5]
        )
        raise ModelConfigError(f"{CONFIG_FILE} is invalid: {problems}") from None


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number")


def version_key(version):
    """Numeric parts compare as numbers and sort before text parts: 1.2 < 1.10 < 1.a."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.split("."))


def fingerprint(root):
    """A digest of every entry under ``root``: names, sizes, modification times, inodes.

    It reads only directory entries and stat results, never file contents, so it is
    cheap enough to poll; an edited, added, removed or replaced file changes it.
    OSError if ``root`` itself cannot be read.
    """
    digest = hashlib.blake2b(digest_size=16)
    top = os.stat(root)
    seen = {(top.st_dev, top.st_ino)}
    # Links are followed (a version folder may be a link swapped to a new target), each
    # folder once, so a link to an ancestor cannot loop.
    for folder, dirs, files in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(dirs):
            try:
                stat = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            if name.startswith(".") or (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            kept.append(name)
            relative = os.path.relpath(os.path.join(folder, name), root)
            digest.update(f"{relative}/\0{stat.st_dev}\0{stat.st_ino}\n".encode())
        dirs[:] = kept
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:  # removed meanwhile, or a dangling link: still a change
                stat = None
            relative = os.path.relpath(path, root)
            if stat is None:
                digest.update(f"{relative}\0missing\n".encode())
            else:
                digest.update(
                    f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\n".encode()
                )
    return digest.hexdigest()


def changes(before, after):
    """The versions to load and unload to go from scan ``before`` (or None) to ``after``."""
    old = before.models if before is not None else {}
    load, unload, reconfigured = [], [], []
    for name, plan in after.models.items():
        previous = {v.version: v for v in old[name].versions} if name in old else {}
        for version in plan.versions:
            if previous.get(version.version) != version:
                load.append((name, version))
        if name in old and old[name].config != plan.config:
            reconfigured.append(name)
    for name, plan in old.items():
        current = after.models.get(name)
        kept = {v.version for v in current.versions} if current else set()
        unload.extend((name, v.version) for v in plan.versions if v.version not in kept)
    return Changes(tuple(load), tuple(unload), tuple(reconfigured))
