"""Request and response shapes: validated with pydantic, documented in OpenAPI.

Views call :func:`parse` to turn the request body into a validated model; the
same models feed the OpenAPI document through spectree.
"""

from typing import Annotated

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


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str | None = None
    token_type: str = "bearer"
    expires_in: int


class LoginForm(BaseModel):
    username: str
    password: str


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
