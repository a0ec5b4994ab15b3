"""The Open Inference Protocol (KServe V2 REST), served from the model registry.

The routes live under /v2 beside the v2 prediction routes. Their errors are the
protocol's ``{"error": "..."}`` (raised as :class:`ProtocolError`, or the serving
errors, which mlapi/errors.py renders so here): 400 for a bad request or tensor,
404 for an unknown model or version, 503 for a model that failed to load.
Authentication and rate limit errors stay problem+json, as everywhere else.

Supported extensions: binary tensor data (mlapi/serving/binary.py), the model
repository (index, load, unload; admin only) and statistics. Bodies are read
whatever the Content-Type (tritonclient sends none).
"""

import math

from flask import Blueprint, current_app, g, request
from werkzeug.exceptions import HTTPException

from mlapi.api import health
from mlapi.api.decorators import per_user_predictions
from mlapi.api.docs import API_VERSION, Response, describe
from mlapi.api.schemas import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    ModelStatistics,
    Problem,
    ProtocolErrorBody,
    RepositoryIndex,
    RepositoryList,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from mlapi.auth import admin_required, token_required
from mlapi.errors import ProtocolError
from mlapi.extensions import limiter
from mlapi.observability.metrics import count_prediction, model_statistics
from mlapi.predictions import registry, reloader
from mlapi.serving import binary
from mlapi.serving.errors import ModelNotFound
from mlapi.serving.reload import ControlUnavailable

bp = Blueprint("inference", __name__, url_prefix="/v2")

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
PROTOCOL_ERRORS = {
    "HTTP_400": ProtocolErrorBody,
    "HTTP_404": ProtocolErrorBody,
    "HTTP_503": ProtocolErrorBody,
}
AUTH_ERRORS = {"HTTP_401": Problem, "HTTP_429": Problem}
ADMIN_ERRORS = {**AUTH_ERRORS, "HTTP_403": Problem}


def documented(out, errors=None, body=None, authenticated=False):
    """Describe an inference route in the OpenAPI document."""
    extra = {"security": {"bearer": []}} if authenticated else {}
    if body is not None:
        extra["json"] = body
    return describe(
        resp=Response(HTTP_200=out, **(errors or {})),
        tags=["inference"],
        **extra,
    )


@bp.get("")
@limiter.exempt
@documented(ServerMetadata)
def server_metadata():
    """Server metadata: name, version, and the protocol extensions supported."""
    config = current_app.config
    return {
        "name": config["SERVICE_NAME"],
        "version": API_VERSION,
        "extensions": EXTENSIONS,
    }


@bp.get("/health/live")
@limiter.exempt
@documented(ServerLive)
def server_live():
    """Server liveness: the process answers."""
    return {"live": True}


@bp.get("/health/ready")
@limiter.exempt
@documented(ServerReady, {"HTTP_503": ProtocolErrorBody})
def server_ready():
    """Server readiness: the checks of /health/ready; 503 when a required one fails."""
    app = current_app._get_current_object()
    checks = health.run_checks(app)
    required = health.required_checks(app)
    failed = sorted(n for n, check in checks.items() if check["status"] != "ok" and n in required)
    if failed:
        g.retry_after = 1  # kept by limits.strip_retry_after
        raise ProtocolError(f"Not ready: the {', '.join(failed)} check failed.", 503)
    return {"ready": True}, 200, {"Cache-Control": "no-store"}


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
@limiter.exempt
@documented(ModelReady, {"HTTP_404": ProtocolErrorBody, "HTTP_503": ModelReady})
def model_ready(name, version=None):
    """Model readiness: 200 when served, 503 with the reason when it failed to load."""
    try:
        find_model(name, version)
    except ProtocolError as exc:
        if exc.code != 503:
            raise
        return {"name": name, "ready": False, "error": exc.description}, 503
    return {"name": name, "ready": True}


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
@token_required
@per_user_predictions
@documented(ModelMetadata, {**PROTOCOL_ERRORS, **AUTH_ERRORS}, authenticated=True)
def model_metadata(name, version=None):
    """Model metadata: its versions and labels, platform, and declared tensors."""
    model = find_model(name, version)
    body = {
        "name": model.name,
        "versions": registry().versions(name),
        "platform": model.platform,
        "inputs": [tensor.metadata() for tensor in model.inputs],
        "outputs": [tensor.metadata() for tensor in model.outputs],
    }
    labels = registry().labels(name)
    if labels:
        body["parameters"] = {"labels": labels}
    if model.max_batch_size:
        body.setdefault("parameters", {})["max_batch_size"] = model.max_batch_size
    return body


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
@token_required
@per_user_predictions
@documented(InferResponse, {**PROTOCOL_ERRORS, **AUTH_ERRORS}, InferRequest, authenticated=True)
def infer(name, version=None):
    """Run a model on named tensors, JSON or binary (the binary tensor data extension)."""
    model = find_model(name, version)
    inference = parse_request()
    rows = check_batch(inference, model)
    wanted = binary.select_outputs(inference, [tensor.name for tensor in model.outputs])
    outputs = registry().infer(model, inference.inputs)
    count_prediction(model, version="oip", rows=rows)
    header = {"model_name": model.name, "model_version": model.version}
    if inference.id is not None:
        header["id"] = inference.id
    body, header_length = binary.encode_response(
        header,
        {name: outputs[name] for name, _ in wanted},
        {name for name, as_binary in wanted if as_binary},
    )
    if header_length is None:
        return current_app.response_class(body, mimetype="application/json")
    return current_app.response_class(
        body,
        mimetype=binary.BINARY_CONTENT_TYPE,
        headers={binary.HEADER_LENGTH: str(header_length)},
    )


@bp.get("/models/<name>/stats")
@bp.get("/models/<name>/versions/<version>/stats")
@token_required
@documented(ModelStatistics, {**PROTOCOL_ERRORS, **AUTH_ERRORS}, authenticated=True)
def model_stats(name, version=None):
    """Statistics of a model's versions, summed over every worker (the Prometheus counters)."""
    models = registry()
    if version is not None:
        versions = [find_model(name, version).version]
    else:
        find_model(name)
        versions = models.versions(name)
    return {"model_stats": [model_statistics(name, v) for v in versions]}


@bp.post("/repository/index")
@token_required
@admin_required
@documented(RepositoryList, ADMIN_ERRORS, authenticated=True)
def repository_index():
    """Rescan the model repository on every worker; each model version's state and reason."""
    # The extension's index is a bare JSON list, as tritonclient reads it.
    return index_of(repository_change(reloader().index))


@bp.post("/repository/models/<name>/load")
@token_required
@admin_required
@documented(RepositoryIndex, {**PROTOCOL_ERRORS, **ADMIN_ERRORS}, authenticated=True)
def repository_load(name):
    """Serve model ``name`` from the repository (again) on every worker."""
    snapshot = repository_change(reloader().load, name)
    entries = [entry for entry in index_of(snapshot) if entry["name"] == name]
    if not entries:
        raise ProtocolError(f"The repository has no model {name!r}.", 404)
    failed = [entry for entry in entries if entry["state"] != "READY"]
    if len(failed) == len(entries):
        raise ProtocolError(f"Model {name!r} failed to load: {failed[0]['reason']}")
    return {"models": entries}


@bp.post("/repository/models/<name>/unload")
@token_required
@admin_required
@documented(RepositoryIndex, {**PROTOCOL_ERRORS, **ADMIN_ERRORS}, authenticated=True)
def repository_unload(name):
    """Stop serving model ``name`` on every worker until it is loaded again."""
    snapshot = registry().snapshot
    known = name in snapshot.models or any(key.split("/")[0] == name for key in snapshot.failures)
    if not known:
        raise ProtocolError(f"Model {name!r} is not loaded.", 404)
    if name not in (snapshot.scan.models if snapshot.scan else {}):
        raise ProtocolError(
            f"Model {name!r} is not a repository folder; only those can be unloaded."
        )
    snapshot = repository_change(reloader().unload, name)
    return {"models": [entry for entry in index_of(snapshot) if entry["name"] == name]}


# --- helpers -------------------------------------------------------------------------


def find_model(name, version=None):
    """The model ``name`` at ``version`` or label (default: its highest).

    A 404 if there is none, a 503 with the reason if it failed to load.
    """
    models = registry()
    try:
        return models.get(name, version)
    except ModelNotFound:
        pass
    reason = models.failure(name, version)
    if reason is not None:
        what = f"Model {name!r}" + (f" version {version!r}" if version else "")
        raise ProtocolError(f"{what} is not ready: {reason}", 503)
    try:
        versions = models.versions(name)
    except ModelNotFound:
        raise ProtocolError(f"Model {name!r} is not loaded.", 404) from None
    loaded = ", ".join(versions)
    raise ProtocolError(f"Model {name!r} has no version {version!r} (loaded: {loaded}).", 404)


def repository_change(action, *args):
    """Run a repository action; a 503 with Retry-After when the shared control state
    (Redis) is down: applying it on this host alone would leave the hosts disagreeing."""
    try:
        return action(*args)
    except ControlUnavailable:
        g.retry_after = max(1, math.ceil(current_app.config["REDIS_RETRY_SECONDS"]))
        raise ProtocolError(
            "The model repository cannot be changed now: Redis is unavailable. Retry shortly.",
            503,
        ) from None


def parse_request():
    """The body (a JSON header, then any binary tensor data) as an InferenceRequest."""
    try:
        body = request.get_data()
    except HTTPException as exc:
        raise ProtocolError(exc.description, exc.code) from None
    return binary.decode_request(body, request.headers.get(binary.HEADER_LENGTH))


def check_batch(inference, model):
    """The request's rows, within MLAPI_MAX_BATCH and the model's max_batch_size; else a 400."""
    config = current_app.config
    limit = min(config["MAX_BATCH"], model.max_batch_size or math.inf)
    rows = 1
    for name, array in inference.inputs.items():
        if array.ndim > 1 or model.platform != "numpy":
            rows = array.shape[0] if array.ndim else 1
        if rows > limit:
            raise ProtocolError(
                f"Input {name!r} has a batch of {rows} rows; model {model.name!r} takes at "
                f"most {limit} per request."
            )
        width = array.shape[-1] if array.ndim else 1
        if model.platform == "numpy" and width > config["MAX_FEATURES"]:
            raise ProtocolError(
                f"Each row must have 1 to {config['MAX_FEATURES']} features, got {array.shape[-1]}."
            )
    return rows


def index_of(snapshot):
    """The repository extension's index: every model version with its state and reason."""
    entries = [
        {"name": model.name, "version": model.version, "state": "READY"}
        for versions in snapshot.models.values()
        for model in versions.values()
    ]
    for key, reason in snapshot.failures.items():
        name, _, version = key.partition("/")
        entry = {"name": name, "state": "UNAVAILABLE", "reason": reason}
        if version:
            entry["version"] = version
        entries.append(entry)
    return sorted(entries, key=lambda e: (e["name"], e.get("version", "")))
