"""Request bodies: read, validated against a schema, and bounded by the configured limits.

A view names its schema once, with :func:`body`: the body is validated against it
and passed to the view, and the OpenAPI document (``describe``) shows the same schema.
"""

from functools import wraps

from flask import current_app, request
from pydantic import RootModel, TypeAdapter, ValidationError

from mlapi import context
from mlapi.api.schemas import FeatureRow, Features, Instances, PredictBody
from mlapi.errors import ValidationProblem, error_item, from_pydantic, invalid

FEATURE_ROW = TypeAdapter(FeatureRow)
BARE_ROW = "mlapi.bare_row"  # where a request keeps its body's row (or None)


def body(schema):
    """Validate the JSON body against ``schema`` and pass it to the view as its first argument.

    A root schema passes its value (``Features``: the list of numbers); ``PredictBody``
    passes ``(rows, batched)`` (see :func:`parse_rows`).
    """

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            return view(read(schema), *args, **kwargs)

        wrapper.body_schema = schema
        return wrapper

    return decorate


def read(schema):
    if schema is PredictBody:
        return parse_rows()
    if schema is Features:
        row = bare_row()
        if row is not None:
            return row
    value = parse(schema)
    return value.root if isinstance(value, RootModel) else value


def parse(model):
    """Validate the JSON body against ``model``; raise a 422 problem naming each error."""
    try:
        value = model.model_validate(request.get_json())
    except ValidationError as exc:
        raise invalid(from_pydantic(exc)) from None
    check_size(value)
    return value


def check_size(value):
    """Enforce the configured feature bound (a runtime setting, so not in the schema)."""
    if isinstance(value, Features):
        limit = current_app.config["MAX_FEATURES"]
        if len(value.root) > limit:
            raise ValidationProblem(
                f"Too many features: at most {limit} are accepted, got {len(value.root)}.",
                [error_item("/", f"at most {limit} items", "too_long")],
            )


def parse_rows():
    """The feature rows of a prediction body, and whether it was a batch.

    A bare JSON array is one row. ``{"instances": [...]}`` is a batch whose rows
    obey the rules of a single body and have equal lengths. Any other body is
    validated as a bare array, so its error names what a single body must be.
    """
    row = bare_row()
    if row is not None:
        return [row], False
    data = request.get_json()
    if not (isinstance(data, dict) and "instances" in data):
        return [parse(Features).root], False
    limit = current_app.config["MAX_BATCH"]
    if isinstance(data["instances"], list) and len(data["instances"]) > limit:
        count = len(data["instances"])
        raise ValidationProblem(
            f"Too many instances: at most {limit} rows are accepted, got {count}.",
            [error_item("/instances", f"at most {limit} items", "too_long")],
        )
    rows = parse(Instances).instances
    check_rows(rows)
    return rows, True


def bare_row():
    """The common body, a bare array of finite numbers, validated in one pass over its
    bytes by pydantic-core; None for any other body, or one it refuses.

    It accepts only what the general path accepts (the same ``FiniteNumber`` rules,
    applied to the same JSON): whatever it does not accept takes the general path,
    which parses the body again and explains the error in the usual words.
    """
    environ = context.current_request().environ
    if BARE_ROW not in environ:  # read once per request (/predict-cached's key reads it too)
        environ[BARE_ROW] = _bare_row()
    return environ[BARE_ROW]


def _bare_row():
    req = context.current_request()
    if not req.is_json:
        return None
    data = req.get_data()
    if data[:1] != b"[":
        return None
    try:
        row = FEATURE_ROW.validate_json(data)
    except ValidationError:
        return None
    return row if len(row) <= context.app().config["MAX_FEATURES"] else None


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
        errors.append(error_item(f"/instances/{i}", detail, kind))
    if errors:
        raise invalid(errors)


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
    if not context.app().config["BATCH_COUNTS_ROWS"]:
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
    data = request.get_data()
    # A binary tensor request: its JSON header is the first N bytes.
    header_length = request.headers.get("Inference-Header-Content-Length", "")
    if header_length.isdigit():
        data = data[: int(header_length)]
    return current_app.json.loads(data)


def claimed_rows(data):
    """Rows in an ``instances`` batch or in the first tensor of an inference request."""
    if not isinstance(data, dict):
        return 1
    if isinstance(data.get("instances"), list):
        return len(data["instances"])
    inputs = data.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        shape = inputs[0].get("shape")
        if isinstance(shape, list) and len(shape) == 2 and type(shape[0]) is int:
            return shape[0]
    return 1
