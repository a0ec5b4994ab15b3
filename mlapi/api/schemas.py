"""Request and response shapes: validated with pydantic, documented in OpenAPI.

Views name a request schema once, with ``@body`` (mlapi/api/bodies.py), which both
validates the body and documents it; the same models feed the OpenAPI document
through spectree.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from mlapi.serving.models import FiniteNumber


class Features(RootModel[Annotated[list[FiniteNumber], Field(min_length=1)]]):
    """A JSON array of 1 to MLAPI_MAX_FEATURES finite numbers."""

    model_config = ConfigDict(json_schema_extra={"examples": [[1.0, 2.0, 3.0, 4.0]]})


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
    status: Literal["ready", "degraded", "not ready"]
    required: list[str]
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
    error: str | None = None


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
    parameters: dict | None = None


class StatisticsDuration(BaseModel):
    count: int
    ns: int


class VersionStatistics(BaseModel):
    name: str
    version: str
    inference_count: int
    execution_count: int
    inference_stats: dict[str, StatisticsDuration]


class ModelStatistics(BaseModel):
    model_stats: list[VersionStatistics]


class RepositoryEntry(BaseModel):
    name: str
    version: str | None = None
    state: str
    reason: str | None = None


class RepositoryIndex(BaseModel):
    models: list[RepositoryEntry]


class RepositoryList(RootModel[list[RepositoryEntry]]):
    pass


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
    """An output tensor: ``data`` in JSON, or ``parameters.binary_data_size`` bytes after it."""

    name: str
    shape: list[int]
    datatype: str
    data: list | None = None
    parameters: dict | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]
