"""The Open Inference Protocol (KServe V2 REST), served from the model registry.

The routes live under /v2 beside the v2 prediction routes. Their errors are the
protocol's ``{"error": "..."}`` (raised as :class:`ProtocolError`): 400 for a bad
request or tensor, 404 for an unknown model or version. Authentication and rate
limit errors stay problem+json, as everywhere else in the API.

Tensors travel as JSON, read whatever the Content-Type (tritonclient sends
none). The binary tensor data extension is not implemented: such a request
gets a 400 that says so. Inputs of any numeric datatype are read
as the datatype says and converted to float64, which is what every model takes.
"""

import numpy as np
from flask import Blueprint, current_app, request
from flask_jwt_extended import current_user, jwt_required
from pydantic import ValidationError
from spectree import Response
from werkzeug.exceptions import HTTPException

from mlapi import health, models
from mlapi.errors import ProtocolError, ValidationProblem, pointer
from mlapi.extensions import limiter, spec
from mlapi.limits import per_user_predictions
from mlapi.observability import count_prediction
from mlapi.openapi import describe
from mlapi.schemas import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    Problem,
    ProtocolErrorBody,
    ServerLive,
    ServerMetadata,
    ServerReady,
    summary,
)

bp = Blueprint("inference", __name__, url_prefix="/v2")

PLATFORM = "numpy"
DATATYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}
BINARY_REFUSED = (
    "Binary tensor data is not supported: send the tensor's data as JSON "
    "(with tritonclient, set_data_from_numpy(array, binary_data=False))."
)
PROTOCOL_ERRORS = {"HTTP_400": ProtocolErrorBody, "HTTP_404": ProtocolErrorBody}
AUTH_ERRORS = {"HTTP_401": Problem, "HTTP_429": Problem}


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
    """Server metadata: name, version, and the protocol extensions supported (none)."""
    config = current_app.config
    return {"name": config["SERVICE_NAME"], "version": spec.config.version, "extensions": []}


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
        raise ProtocolError(f"Not ready: the {', '.join(failed)} check failed.", 503)
    return {"ready": True}, 200, {"Cache-Control": "no-store"}


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
@limiter.exempt
@documented(ModelReady, {"HTTP_404": ProtocolErrorBody})
def model_ready(name, version=None):
    """Model readiness: 200 for a loaded model (models load at start), 404 for an unknown one."""
    find_model(name, version)
    return {"name": name, "ready": True}


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
@jwt_required()
@per_user_predictions
@documented(ModelMetadata, {**PROTOCOL_ERRORS, **AUTH_ERRORS}, authenticated=True)
def model_metadata(name, version=None):
    """Model metadata: its versions, platform, and declared input and output tensors."""
    model = find_model(name, version)
    return {
        "name": model.name,
        "versions": models.registry().versions(name),
        "platform": PLATFORM,
        "inputs": [model.input_tensor.metadata()],
        "outputs": [model.output_tensor.metadata()],
    }


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
@jwt_required()
@per_user_predictions
@documented(InferResponse, {**PROTOCOL_ERRORS, **AUTH_ERRORS}, InferRequest, authenticated=True)
def infer(name, version=None):
    """Run a model on one tensor of shape [batch, features] (or [features], one row)."""
    model = find_model(name, version)
    inference = parse_request()
    check_outputs(inference, model)
    values = run(model, input_batch(inference, model))
    count_prediction(model, current_user.username, version="oip", rows=len(values))
    return response_body(inference, model, values)


# --- helpers -------------------------------------------------------------------------


def find_model(name, version=None):
    """The model ``name`` at ``version`` (default: its highest); a 404 if there is none."""
    registry = models.registry()
    try:
        versions = registry.versions(name)
    except KeyError:
        raise ProtocolError(f"Model {name!r} is not loaded.", 404) from None
    if version is not None and version not in versions:
        loaded = ", ".join(versions)
        raise ProtocolError(f"Model {name!r} has no version {version!r} (loaded: {loaded}).", 404)
    return registry.get(name, version)


def parse_request():
    """The JSON body as an InferRequest; a 400 naming the first problem otherwise."""
    if "Inference-Header-Content-Length" in request.headers:
        raise ProtocolError(BINARY_REFUSED)
    try:
        body = request.get_json(force=True)
    except HTTPException as exc:
        raise ProtocolError(exc.description, exc.code) from None
    try:
        return InferRequest.model_validate(body)
    except ValidationError as exc:
        errors = [
            {"pointer": pointer(err["loc"]), "detail": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ProtocolError(summary(errors, len(errors))) from None


def check_outputs(inference, model):
    for wanted in inference.outputs or ():
        if wanted.name != model.output_tensor.name:
            raise ProtocolError(
                f"Model {model.name!r} has one output, {model.output_tensor.name!r}; "
                f"the request asks for {wanted.name!r}."
            )


def input_batch(inference, model):
    """The request's single input tensor as a 2-D float64 batch."""
    names = [tensor.name for tensor in inference.inputs]
    if names != [model.input_tensor.name]:
        raise ProtocolError(
            f"Model {model.name!r} takes one input, {model.input_tensor.name!r}; got {names}."
        )
    tensor = inference.inputs[0]
    if (tensor.parameters or {}).get("binary_data_size") is not None:
        raise ProtocolError(BINARY_REFUSED)
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise ProtocolError(
            f"Datatype {tensor.datatype!r} is not supported; use one of {', '.join(DATATYPES)}."
        )
    rows, width = batch_shape(tensor.shape)
    values = flatten(tensor.data)
    if len(values) != rows * width:
        raise ProtocolError(
            f"Input {tensor.name!r} has {len(values)} values, "
            f"but its shape {tensor.shape} needs {rows * width}."
        )
    return to_float64(values, dtype, tensor.datatype).reshape(rows, width)


def batch_shape(shape):
    """(rows, features) of a [batch, features] or [features] shape, within the limits."""
    if len(shape) == 1:
        shape = [1, *shape]
    if len(shape) != 2:
        raise ProtocolError(f"The input shape must be [batch, features] or [features]: {shape}.")
    rows, width = shape
    max_rows, max_width = current_app.config["MAX_BATCH"], current_app.config["MAX_FEATURES"]
    if not 1 <= rows <= max_rows:
        raise ProtocolError(f"The batch must have 1 to {max_rows} rows, got {rows}.")
    if not 1 <= width <= max_width:
        raise ProtocolError(f"Each row must have 1 to {max_width} features, got {width}.")
    return rows, width


def flatten(data):
    """Nested lists to one flat list, row-major, without recursion."""
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def to_float64(values, dtype, datatype):
    """Read JSON numbers as ``datatype`` says, refusing what it cannot hold; return float64."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if any(type(v) is not int for v in values):
            raise ProtocolError(f"{datatype} data must be JSON integers.")
        if min(values) < info.min or max(values) > info.max:
            raise ProtocolError(f"{datatype} data must lie in [{info.min}, {info.max}].")
        return np.array(values, dtype=dtype).astype(np.float64)
    if any(type(v) not in (int, float) for v in values):
        raise ProtocolError(f"{datatype} data must be JSON numbers.")
    try:
        array = np.array(values, dtype=np.float64)
    except OverflowError:
        array = np.array([np.inf])
    if not np.isfinite(array).all():
        raise ProtocolError(f"{datatype} data must be finite: no NaN, Infinity or overflow.")
    if dtype is np.float32:
        if (np.abs(array) > np.finfo(np.float32).max).any():
            raise ProtocolError("FP32 data must lie within the range of a 32-bit float.")
        array = array.astype(np.float32).astype(np.float64)
    return array


def run(model, batch):
    """The model's predictions; a prediction it cannot compute is a 400 here."""
    try:
        return models.predict(model.name, batch, model.version)[1]
    except ValidationProblem as exc:
        raise ProtocolError(exc.description) from None


def response_body(inference, model, values):
    body = {"model_name": model.name, "model_version": model.version}
    if inference.id is not None:
        body["id"] = inference.id
    output = model.output_tensor
    body["outputs"] = [
        {
            "name": output.name,
            "datatype": output.datatype,
            "shape": [len(values)],
            "data": values.tolist(),
        }
    ]
    return body
