"""The Open Inference Protocol (KServe V2 REST) routes: every status they can answer,
in the protocol's shapes, computed by the same models as /v1 and /v2."""

import json

import numpy as np
import pytest

from mlapi.api import health
from mlapi.observability.metrics import PREDICTIONS
from tests.helpers import assert_problem, client_for

PRICE_V1 = {"name": "price", "version": "1", "kind": "linear", "weights": [2.0, -0.5, 0.25]}
PRICE_V2 = {"name": "price", "version": "2", "kind": "linear", "weights": [1.0, 1.0, 1.0]}


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / "price-1.json").write_text(json.dumps({**PRICE_V1, "bias": 1.5}))
    (directory / "price-2.json").write_text(json.dumps({**PRICE_V2, "bias": 0.0}))
    return directory


@pytest.fixture
def app(make_app, model_dir):
    return make_app(MODEL_DIR=str(model_dir))


def tensor(data, shape, datatype="FP64", name="features"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def infer_body(data, shape, datatype="FP64", **extra):
    return {"inputs": [tensor(data, shape, datatype)], **extra}


def assert_protocol_error(response, status, message):
    """The response is the protocol's {"error": ...} with this status; returns the message."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == ["error"]
    assert message in body["error"]
    return body["error"]


# --- server and model health, metadata ----------------------------------------------


def test_server_metadata_needs_no_token(client):
    """GET /v2 names the server, its version and its protocol extensions."""
    response = client.get("/v2")
    assert response.status_code == 200
    assert response.get_json() == {
        "name": "mlapi",
        "version": "1.0.0",
        "extensions": ["binary_tensor_data", "model_repository", "statistics"],
    }


def test_server_live_and_ready_need_no_token(client):
    """The protocol's health routes answer 200 without authentication."""
    live = client.get("/v2/health/live")
    assert (live.status_code, live.get_json()) == (200, {"live": True})
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.get_json()) == (200, {"ready": True})
    assert ready.headers["Cache-Control"] == "no-store"


def test_server_ready_is_503_when_a_readiness_check_fails(client, monkeypatch):
    """A failing /health/ready check makes /v2/health/ready a 503 naming it."""

    def database_down(app):
        raise ConnectionError("database is down")

    monkeypatch.setattr(health, "check_database", database_down)
    response = client.get("/v2/health/ready")
    assert_protocol_error(response, 503, "the database check failed")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/average/ready",
        "/v2/models/weighted_average/versions/2.0/ready",
        "/v2/models/price/ready",
        "/v2/models/price/versions/1/ready",
    ],
)
def test_loaded_models_are_ready_without_a_token(client, path):
    """A loaded model, at its default or a given version, is ready."""
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json()["ready"] is True


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/nope/ready", "Model 'nope' is not loaded."),
        ("/v2/models/price/versions/9/ready", "Model 'price' has no version '9' (loaded: 1, 2)."),
    ],
)
def test_unknown_models_and_versions_are_not_ready(client, path, message):
    """Readiness of an unknown model or version is a 404 in the protocol's error shape."""
    assert_protocol_error(client.get(path), 404, message)


def test_model_metadata_of_a_built_in_model(client, auth):
    """Metadata lists versions, platform, and the declared input and output tensors."""
    response = client.get("/v2/models/average", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {
        "name": "average",
        "versions": ["1.0"],
        "platform": "numpy",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, -1]}],
        "outputs": [{"name": "prediction", "datatype": "FP64", "shape": [-1]}],
    }


def test_model_metadata_of_a_loaded_model_and_version(client, auth):
    """A loaded model declares its fixed width; every version is listed."""
    for path in ("/v2/models/price", "/v2/models/price/versions/1"):
        body = client.get(path, headers=auth).get_json()
        assert body["versions"] == ["1", "2"]
        assert body["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 3]}]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/nope", "Model 'nope' is not loaded."),
        ("/v2/models/price/versions/3", "has no version '3'"),
    ],
)
def test_metadata_of_an_unknown_model_or_version_is_404(client, auth, path, message):
    """Unknown model or version: 404 with {"error"}."""
    assert_protocol_error(client.get(path, headers=auth), 404, message)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v2/models/average"),
        ("get", "/v2/models/average/versions/1.0"),
        ("post", "/v2/models/average/infer"),
        ("post", "/v2/models/average/versions/1.0/infer"),
    ],
)
def test_metadata_and_infer_need_a_token(client, method, path):
    """Without a bearer token: the API's usual 401 problem with a Bearer challenge."""
    response = getattr(client, method)(path, json=infer_body([1.0], [1, 1]))
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_other_errors_on_these_routes_stay_problem_json(client, auth):
    """Only the protocol's own errors are {"error"}; a wrong method is a 405 problem."""
    assert_problem(client.get("/v2/models/average/infer", headers=auth), 405)


# --- inference ----------------------------------------------------------------------

INTEGER_ROWS = [[1, 2, 3], [4, 5, 6]]
FLOAT_ROWS = [[0.5, -1.25, 3.0], [1e10, 2.5e-3, -7.0]]
DATATYPE_ROWS = {
    "FP32": FLOAT_ROWS,
    "FP64": FLOAT_ROWS,
    **{t: INTEGER_ROWS for t in ("INT8", "INT16", "INT32", "INT64")},
    **{t: INTEGER_ROWS for t in ("UINT8", "UINT16", "UINT32", "UINT64")},
}


@pytest.mark.parametrize("datatype", sorted(DATATYPE_ROWS))
def test_infer_accepts_every_numeric_datatype(client, auth, datatype):
    """Each datatype is read as declared (FP32 rounds to float32) and averaged in float64."""
    rows = DATATYPE_ROWS[datatype]
    body = infer_body(rows, [2, 3], datatype, id="req-7")
    response = client.post("/v2/models/average/infer", json=body, headers=auth)
    assert response.status_code == 200, response.get_json()
    numpy_dtype = np.float32 if datatype == "FP32" else np.float64
    expected = np.average(np.array(rows, dtype=numpy_dtype).astype(np.float64), axis=1)
    assert response.get_json() == {
        "model_name": "average",
        "model_version": "1.0",
        "id": "req-7",
        "outputs": [
            {"name": "prediction", "datatype": "FP64", "shape": [2], "data": expected.tolist()}
        ],
    }


def test_fp32_input_is_rounded_to_float32(client, auth):
    """0.1 sent as FP32 is the float32 nearest 0.1, not the float64 one."""
    response = client.post(
        "/v2/models/average/infer", json=infer_body([0.1], [1, 1], "FP32"), headers=auth
    )
    assert response.get_json()["outputs"][0]["data"] == [float(np.float32(0.1))]
    assert float(np.float32(0.1)) != 0.1


def test_flat_and_nested_data_give_the_same_outputs(client, auth):
    """Data may be flat or nested; it is read in row-major order."""
    flat = infer_body([1, 2, 3, 4, 5, 6], [2, 3])
    nested = infer_body([[1, 2, 3], [4, 5, 6]], [2, 3])
    deep = infer_body([[[1], [2], [3]], [[4], [5], [6]]], [2, 3])
    outputs = [
        client.post("/v2/models/average/infer", json=body, headers=auth).get_json()["outputs"]
        for body in (flat, nested, deep)
    ]
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0][0]["data"] == [2.0, 5.0]


def test_a_one_dimensional_shape_is_one_row(client, auth):
    """Shape [features] is a batch of one row; the output has shape [1]."""
    response = client.post(
        "/v2/models/weighted_average/infer", json=infer_body([1, 2, 3, 4], [4]), headers=auth
    )
    output = response.get_json()["outputs"][0]
    assert output["shape"] == [1]
    assert output["data"] == [pytest.approx((1 + 3 + 6 + 2) / 5.0, rel=1e-15)]


def test_infer_on_a_loaded_model_at_each_version(client, auth):
    """The default is the highest version; a versioned route runs that version."""
    x = np.array([[1.0, 2.0, 3.0], [-4.0, 8.0, 16.0]])
    body = infer_body(x.tolist(), [2, 3])
    default = client.post("/v2/models/price/infer", json=body, headers=auth).get_json()
    first = client.post("/v2/models/price/versions/1/infer", json=body, headers=auth).get_json()
    assert default["model_version"] == "2"
    assert default["outputs"][0]["data"] == np.sum(x, axis=1).tolist()
    assert first["model_version"] == "1"
    expected = np.sum(x * np.array(PRICE_V1["weights"]), axis=1) + 1.5
    assert first["outputs"][0]["data"] == expected.tolist()


def test_no_id_means_no_id_in_the_response(client, auth):
    """The id is echoed only when the request has one."""
    body = client.post(
        "/v2/models/average/infer", json=infer_body([1], [1, 1]), headers=auth
    ).get_json()
    assert "id" not in body


def test_requested_outputs_and_parameters_are_accepted(client, auth):
    """Naming the model's output, and tritonclient's binary_data_output, still answer JSON."""
    body = infer_body(
        [2, 4],
        [1, 2],
        outputs=[{"name": "prediction", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True},
    )
    response = client.post("/v2/models/average/infer", json=body, headers=auth)
    assert response.status_code == 200
    assert response.get_json()["outputs"][0]["data"] == [3.0]


def test_unknown_model_or_version_for_infer_is_404(client, auth):
    """Inference on an unknown model or version is a 404 {"error"}."""
    body = infer_body([1.0], [1, 1])
    assert_protocol_error(
        client.post("/v2/models/nope/infer", json=body, headers=auth), 404, "not loaded"
    )
    assert_protocol_error(
        client.post("/v2/models/average/versions/7/infer", json=body, headers=auth),
        404,
        "Model 'average' has no version '7' (loaded: 1.0).",
    )


BAD_REQUESTS = {
    "data shorter than the shape": (infer_body([1, 2, 3], [2, 2]), "has 3 values"),
    "data longer than the shape": (infer_body([1, 2, 3, 4, 5], [2, 2]), "needs 4"),
    "a 3-D shape": (infer_body([1] * 8, [2, 2, 2]), "must have shape [batch, features]"),
    "a 0-D shape": (infer_body([1], []), "must have shape [batch, features]"),
    "no rows": (infer_body([], [0, 3]), "at least one value, got [0, 3]"),
    "too many rows": (infer_body([1] * 1001, [1001, 1]), "batch of 1001 rows; model 'average'"),
    "no features": (infer_body([], [2, 0]), "at least one value, got [2, 0]"),
    "too many features": (infer_body([1] * 10001, [1, 10001]), "1 to 10000 features, got 10001"),
    "a negative dimension": (infer_body([1], [-1, 1]), "shape must be a list of non-negative"),
    "a boolean dimension": (infer_body([1], [True, 1]), "shape must be a list of non-negative"),
    "a huge integer": (infer_body([10**400], [1, 1]), "must be finite"),
    "a boolean value": (infer_body([1, True], [1, 2]), "must be JSON numbers"),
    "a string value": (infer_body(["1.5"], [1, 1]), "must be JSON numbers"),
    "a null value": (infer_body([None], [1, 1]), "must be JSON numbers"),
    "an object value": (infer_body([{"x": 1}], [1, 1]), "must be JSON numbers"),
    "INT8 out of range": (infer_body([1, 128], [1, 2], "INT8"), "INT8 data must lie in"),
    "UINT8 negative": (infer_body([-1], [1, 1], "UINT8"), "UINT8 data must lie in [0, 255]"),
    "UINT64 too big": (infer_body([2**64], [1, 1], "UINT64"), "UINT64 data must lie in"),
    "INT32 fraction": (infer_body([1.5], [1, 1], "INT32"), "INT32 data must be JSON integers"),
    "FP32 out of range": (infer_body([3.5e38], [1, 1], "FP32"), "within the type's range"),
    "BYTES": (infer_body(["abc"], [1, 1], "BYTES"), "must hold numbers, not object"),
    "lower-case datatype": (infer_body([1], [1, 1], "fp32"), "has datatype 'fp32'; the supp"),
    "a wrong input name": (
        {"inputs": [tensor([1], [1, 1], name="x")]},
        "takes one input, 'features'; got ['x']",
    ),
    "two inputs": (
        {"inputs": [tensor([1], [1, 1]), tensor([1], [1, 1])]},
        "Input 'features' is sent twice.",
    ),
    "no inputs": ({"inputs": []}, "inputs must be a non-empty list"),
    "missing inputs": ({"id": "1"}, "inputs must be a non-empty list"),
    "a numeric id": ({**infer_body([1], [1, 1]), "id": 5}, "id must be a string"),
    "an unknown output": (
        infer_body([1], [1, 1], outputs=[{"name": "probability"}]),
        "no output 'probability'; its outputs are prediction",
    ),
    "binary data parameters": (
        {"inputs": [{**tensor([], [1, 1]), "parameters": {"binary_data_size": 8}}]},
        "has both data and parameters.binary_data_size",
    ),
    "a list body": ([1, 2, 3], "The JSON header must be an object."),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_tensors_are_400_with_an_error_message(client, auth, case):
    """Each malformed request or tensor is a 400 {"error"} that says what is wrong."""
    body, message = BAD_REQUESTS[case]
    response = client.post("/v2/models/average/infer", json=body, headers=auth)
    assert_protocol_error(response, 400, message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            '{"inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP64",'
            ' "data": [NaN]}]}',
            "NaN is not a JSON number",
        ),
        (
            '{"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32",'
            ' "data": [1, Infinity]}]}',
            "Infinity is not a JSON number",
        ),
        (
            '{"inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP64",'
            ' "data": [1e400]}]}',
            "must be finite",
        ),
    ],
)
def test_non_finite_values_are_400(client, auth, raw, message):
    """NaN, Infinity and numbers that overflow a float are refused."""
    response = client.post(
        "/v2/models/average/infer",
        data=raw,
        headers={**auth, "Content-Type": "application/json"},
    )
    assert_protocol_error(response, 400, message)


@pytest.mark.parametrize(
    ("path", "rows", "message"),
    [
        ("/v2/models/price/infer", [[1.0, 2.0]], "accepts exactly 3 features, got 2"),
        ("/v2/models/weighted_average/infer", [[1, 2, 3, 4, 5]], "at most 4 features, got 5"),
        ("/v2/models/price/versions/1/infer", [[1.7e308, 0, 0]], "overflows"),
    ],
)
def test_inputs_a_model_cannot_take_are_400(client, auth, path, rows, message):
    """A model's own refusals (width, overflow) are 400 {"error"} here, not 422 problems."""
    body = infer_body(rows, [len(rows), len(rows[0])])
    assert_protocol_error(client.post(path, json=body, headers=auth), 400, message)


def test_binary_tensors_in_and_out(client, auth):
    """The binary tensor data extension: raw input bytes after the JSON header, and a
    binary output when asked, with the response's header length."""
    body = infer_body([], [1, 2])
    del body["inputs"][0]["data"]
    body["inputs"][0]["parameters"] = {"binary_data_size": 16}
    body["parameters"] = {"binary_data_output": True}
    header = json.dumps(body).encode()
    response = client.post(
        "/v2/models/average/infer",
        data=header + np.array([1.0, 2.0]).tobytes(),
        headers={
            **auth,
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    length = int(response.headers["Inference-Header-Content-Length"])
    raw = response.get_data()
    document = json.loads(raw[:length])
    assert document["outputs"] == [
        {
            "name": "prediction",
            "datatype": "FP64",
            "shape": [1],
            "parameters": {"binary_data_size": 8},
        }
    ]
    assert np.frombuffer(raw[length:], dtype="<f8").tolist() == [1.5]


def test_a_binary_body_shorter_than_its_header_length_is_400(client, auth):
    response = client.post(
        "/v2/models/average/infer",
        data=b"{}",
        headers={**auth, "Inference-Header-Content-Length": "10"},
    )
    assert_protocol_error(response, 400, "the body has only 2 bytes")


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        ("{", 400, "not valid JSON"),
        ("[" + "1," * 600_000 + "1]", 413, "exceeds the capacity"),
    ],
)
def test_unreadable_bodies_get_the_protocol_error_shape(client, auth, raw, status, message):
    """Malformed JSON, or a body over 1 MiB: {"error"} and the status."""
    response = client.post(
        "/v2/models/average/infer", data=raw, headers={**auth, "Content-Type": "application/json"}
    )
    assert_protocol_error(response, status, message)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
def test_the_body_is_json_whatever_its_content_type(client, auth, content_type):
    """tritonclient sends its JSON without a Content-Type; infer reads it all the same."""
    headers = {**auth, "Content-Type": content_type} if content_type else auth
    response = client.post(
        "/v2/models/average/infer", data=json.dumps(infer_body([1, 3], [1, 2])), headers=headers
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["outputs"][0]["data"] == [2.0]


def test_infer_counts_rows_in_predictions_total(client, auth):
    """predictions_total{version="oip"} grows by the rows inferred."""
    counter = PREDICTIONS.labels("oip", "price", "")
    before = counter._value.get()
    body = infer_body([[1, 2, 3]] * 4, [4, 3])
    assert client.post("/v2/models/price/infer", json=body, headers=auth).status_code == 200
    assert counter._value.get() - before == 4


def test_metadata_and_infer_share_the_per_user_prediction_limit(make_app, model_dir):
    """Metadata, infer and /v1/predict draw on one budget; health and server metadata do not."""
    client, auth = client_for(make_app(MODEL_DIR=str(model_dir), PREDICT_RATE_LIMIT="3/minute"))
    assert client.get("/v2/models/average", headers=auth).status_code == 200
    body = infer_body([1.0], [1, 1])
    assert client.post("/v2/models/average/infer", json=body, headers=auth).status_code == 200
    assert client.post("/v1/predict", json=[1.0], headers=auth).status_code == 200
    assert_problem(client.post("/v2/models/average/infer", json=body, headers=auth), 429)
    assert_problem(client.get("/v2/models/average", headers=auth), 429)
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/average/ready"):
        assert client.get(path, headers=auth).status_code == 200


def test_with_batch_counts_rows_infer_costs_its_rows(make_app, model_dir):
    """Under MLAPI_BATCH_COUNTS_ROWS an infer of shape [4, 1] costs 4 requests, also
    when sent without a Content-Type as tritonclient does."""
    app = make_app(MODEL_DIR=str(model_dir), PREDICT_RATE_LIMIT="10/minute", BATCH_COUNTS_ROWS=True)
    client, auth = client_for(app)
    body = infer_body([1, 2, 3, 4], [4, 1])
    response = client.post("/v2/models/average/infer", json=body, headers=auth)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "6"
    bare = client.post("/v2/models/average/infer", data=json.dumps(body), headers=auth)
    assert bare.status_code == 200
    assert bare.headers["X-RateLimit-Remaining"] == "2"


def test_with_batch_counts_rows_a_json_view_still_refuses_other_content_types(make_app):
    """Counting rows of a text/plain body does not let /v1/predict skip its 415."""
    client, auth = client_for(make_app(BATCH_COUNTS_ROWS=True, PREDICT_RATE_LIMIT="10/minute"))
    body = json.dumps({"instances": [[1], [2], [3]]})
    response = client.post("/v1/predict", data=body, headers={**auth, "Content-Type": "text/plain"})
    assert_problem(response, 415)
    assert response.headers["X-RateLimit-Remaining"] == "7"


def test_the_openapi_document_describes_the_protocol_routes(client):
    """Every protocol route is documented; infer and metadata ask for the bearer token."""
    paths = client.get("/openapi.json").get_json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
    ):
        assert "security" not in paths[path]["get"], path
    for path in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        assert paths[path]["get"]["security"] == [{"bearer": []}, {"oauth2": []}]
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        operation = paths[path]["post"]
        assert operation["security"] == [{"bearer": []}, {"oauth2": []}]
        assert {"200", "400", "401", "404", "429"} <= set(operation["responses"])
        assert "requestBody" in operation
