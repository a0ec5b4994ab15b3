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

from flask import Blueprint, current_app, request
from flask_jwt_extended import current_user, jwt_required
from pydantic import ValidationError
from spectree import Response
from werkzeug.exceptions import HTTPException

from mlapi.api import health
from mlapi.api.decorators import per_user_predictions
from mlapi.api.docs import describe, spec
from mlapi.api.schemas import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    Problem,
    ProtocolErrorBody,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from mlapi.errors import ProtocolError, from_pydantic, summary
from mlapi.extensions import limiter
from mlapi.observability.metrics import count_prediction
from mlapi.predictions import registry
from mlapi.serving import codec
from mlapi.serving.errors import ModelNotFound, PredictionError, TensorError

bp = Blueprint("inference", __name__, url_prefix="/v2")

PLATFORM = "numpy"
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
    """Server readiness: the checks of /health/ready; 503 when one of them fails."""
    checks = health.run_checks(current_app._get_current_object())
    failed = sorted(name for name, check in checks.items() if check["status"] != "ok")
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
        "versions": registry().versions(name),
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
    models = registry()
    try:
        versions = models.versions(name)
    except ModelNotFound:
        raise ProtocolError(f"Model {name!r} is not loaded.", 404) from None
    if version is not None and version not in versions:
        loaded = ", ".join(versions)
        raise ProtocolError(f"Model {name!r} has no version {version!r} (loaded: {loaded}).", 404)
    return models.get(name, version)


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
        errors = from_pydantic(exc)
        raise ProtocolError(summary(errors)) from None


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
    config = current_app.config
    try:
        return codec.decode(
            tensor.name,
            tensor.shape,
            tensor.datatype,
            tensor.data,
            config["MAX_BATCH"],
            config["MAX_FEATURES"],
        )
    except TensorError as exc:
        raise ProtocolError(str(exc)) from None


def run(model, batch):
    """The model's predictions; a prediction it cannot compute is a 400 here."""
    try:
        return registry().predict(model.name, batch, model.version)[1]
    except PredictionError as exc:
        raise ProtocolError(exc.detail) from None


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
