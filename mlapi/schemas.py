"""Request and response shapes: validated with pydantic, documented in OpenAPI.

Views call :func:`parse` to turn the request body into a validated model; the
same models feed the OpenAPI document through spectree.
"""

from typing import Annotated, Literal

from flask import current_app, request
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from mlapi.errors import ValidationProblem, pointer

# A JSON number that is finite: no booleans, numeric strings, NaN or Infinity.
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class Features(RootModel[Annotated[list[FiniteNumber], Field(min_length=1)]]):
    """A JSON array of 1 to MLAPI_MAX_FEATURES finite numbers."""

    model_config = ConfigDict(json_schema_extra={"examples": [[1.0, 2.0, 3.0, 4.0]]})


def parse(model):
    """Validate the JSON body against ``model``; raise a 422 problem naming each error."""
    body = request.get_json()
    try:
        value = model.model_validate(body)
    except ValidationError as exc:
        errors = [
            {"pointer": pointer(err["loc"]), "detail": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationProblem(summary(errors, exc.error_count()), errors[:100]) from None
    check_size(value)
    return value


def summary(errors, count):
    first = errors[0]
    where = f"at {first['pointer']}" if first["pointer"] != "/" else "in the body"
    more = f" (and {count - 1} more)" if count > 1 else ""
    return f"Invalid request body {where}: {first['detail']}{more}."


def check_size(value):
    """Enforce the configured feature bound (a runtime setting, so not in the schema)."""
    if isinstance(value, Features):
        limit = current_app.config["MAX_FEATURES"]
        if len(value.root) > limit:
            raise ValidationProblem(
                f"Too many features: at most {limit} are accepted, got {len(value.root)}.",
                [{"pointer": "/", "detail": f"at most {limit} items", "type": "too_long"}],
            )


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict] | None = None


class TokenProblem(Problem):
    """A token endpoint error: a problem that also carries RFC 6749 §5.2's members."""

    error: str
    error_description: str


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str | None = None
    token_type: str = "bearer"
    expires_in: int


class TokenForm(BaseModel):
    """The OAuth2 token request: the password grant (the default) or the refresh grant."""

    grant_type: Literal["password", "refresh_token"] = "password"
    username: str | None = None
    password: str | None = None
    refresh_token: str | None = None


class UserOut(BaseModel):
    username: str
    email: str | None
    disabled: bool


class UserPrediction(BaseModel):
    prediction: float
    user: str


class Prediction(BaseModel):
    prediction: float


class CustomLimitPrediction(BaseModel):
    prediction: float
    rate_limit_remaining: int


class CachedPrediction(BaseModel):
    prediction: float
    user: str
    cached: bool


class Message(BaseModel):
    message: str


class V1Prediction(BaseModel):
    version: str = "1.0"
    prediction: float
    method: str = "average"


class V2Prediction(BaseModel):
    version: str = "2.0"
    prediction: float
    method: str = "weighted_average"
    weights: list[float]


class ServiceIndex(BaseModel):
    service: str
    versions: list[str]
    endpoints: dict[str, str]


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, dict]


class HostFigures(BaseModel):
    cpu_percent: float
    memory_percent: float
    disk_percent: float
    process: dict


# --- batches -----------------------------------------------------------------------

FeatureRow = Annotated[list[FiniteNumber], Field(min_length=1)]


class Instances(BaseModel):
    """A batch: rows of 1 to MLAPI_MAX_FEATURES finite numbers, all of one length,
    at most MLAPI_MAX_BATCH rows."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"instances": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}]},
    )

    instances: Annotated[list[FeatureRow], Field(min_length=1)]


class PredictBody(RootModel[FeatureRow | Instances]):
    """One feature vector (a JSON array), or a batch of them as ``{"instances": [...]}``."""


def parse_rows():
    """The feature rows of a prediction body, and whether it was a batch.

    A bare JSON array is one row. ``{"instances": [...]}`` is a batch whose rows
    obey the rules of a single body and have equal lengths. Any other body is
    validated as a bare array, so its error names what a single body must be.
    """
    body = request.get_json()
    if not (isinstance(body, dict) and "instances" in body):
        return [parse(Features).root], False
    limit = current_app.config["MAX_BATCH"]
    if isinstance(body["instances"], list) and len(body["instances"]) > limit:
        count = len(body["instances"])
        raise ValidationProblem(
            f"Too many instances: at most {limit} rows are accepted, got {count}.",
            [{"pointer": "/instances", "detail": f"at most {limit} items", "type": "too_long"}],
        )
    rows = parse(Instances).instances
    check_rows(rows)
    return rows, True


def check_rows(rows):
    """Every row within MLAPI_MAX_FEATURES and as long as the first one."""
    limit = current_app.config["MAX_FEATURES"]
    width = len(rows[0])
    errors = []
    for i, row in enumerate(rows):
        if len(row) > limit:
            detail, kind = f"at most {limit} items", "too_long"
        elif len(row) != width:
            detail, kind = f"should have {width} items like row 0, got {len(row)}", "row_length"
        else:
            continue
        errors.append({"pointer": f"/instances/{i}", "detail": detail, "type": kind})
    if errors:
        raise ValidationProblem(summary(errors, len(errors)), errors[:100])


def prediction_fields(values, batched):
    """``{"predictions": [...]}`` for a batch, ``{"prediction": x}`` for a single body."""
    return {"predictions": values} if batched else {"prediction": values[0]}


def batch_cost():
    """What this request costs the per-user prediction limit: 1, or with
    MLAPI_BATCH_COUNTS_ROWS, the number of rows it carries.

    flask-limiter calls this before the view validates the body, and treats an
    exception as a storage failure, so it never raises: a body it cannot read,
    or a batch the view will refuse as too large, costs 1.
    """
    if not current_app.config["BATCH_COUNTS_ROWS"]:
        return 1
    try:
        rows = claimed_rows(json_body())
    except Exception:
        return 1
    return rows if 1 <= rows <= current_app.config["MAX_BATCH"] else 1


def json_body():
    """The body as JSON, also when sent without a JSON Content-Type, as inference clients
    (tritonclient) do. Only the bytes of such a body are cached, not its JSON, so a
    view that wants the header still answers 415."""
    if request.is_json:
        return request.get_json()
    return current_app.json.loads(request.get_data())


def claimed_rows(body):
    """Rows in an ``instances`` batch or in the first tensor of an inference request."""
    if not isinstance(body, dict):
        return 1
    if isinstance(body.get("instances"), list):
        return len(body["instances"])
    inputs = body.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        shape = inputs[0].get("shape")
        if isinstance(shape, list) and len(shape) == 2 and type(shape[0]) is int:
            return shape[0]
    return 1


class V1BatchPrediction(BaseModel):
    version: str = "1.0"
    predictions: list[float]
    method: str = "average"


class V2BatchPrediction(BaseModel):
    version: str = "2.0"
    predictions: list[float]
    method: str = "weighted_average"
    weights: list[float]


class V1Response(RootModel[V1Prediction | V1BatchPrediction]):
    """``prediction`` for a single body, ``predictions`` (one per row) for a batch."""


class V2Response(RootModel[V2Prediction | V2BatchPrediction]):
    """``prediction`` for a single body, ``predictions`` (one per row) for a batch."""


# --- Open Inference Protocol (KServe V2 REST) --------------------------------------


class ProtocolErrorBody(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class InferInput(BaseModel):
    """A tensor: ``data`` flat or nested, in row-major order."""

    model_config = ConfigDict(strict=True)

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    data: list
    parameters: dict | None = None


class InferRequestedOutput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str
    parameters: dict | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "features",
                            "shape": [2, 3],
                            "datatype": "FP64",
                            "data": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
                        }
                    ],
                }
            ]
        },
    )

    id: str | None = None
    parameters: dict | None = None
    inputs: Annotated[list[InferInput], Field(min_length=1)]
    outputs: list[InferRequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]
