"""Batch predictions on /v1/predict and /v2/predict: ``{"instances": [...]}`` in,
``{"predictions": [...]}`` out, the same numbers as one vector at a time."""

import numpy as np
import pytest

from mlapi.observability.metrics import PREDICTIONS
from tests.helpers import assert_problem, client_for

ENDPOINTS = ["/v1/predict", "/v2/predict"]


@pytest.fixture
def app(make_app):
    """Room in the per-user limit for the agreement test's hundreds of requests."""
    return make_app(PREDICT_RATE_LIMIT="5000/minute")


def test_v1_batch_answers_one_mean_per_row(client, auth):
    """/v1/predict with instances answers predictions in row order, with version and method."""
    response = client.post(
        "/v1/predict", json={"instances": [[1, 2], [3, 5], [-1, 1]]}, headers=auth
    )
    assert response.status_code == 200
    assert response.get_json() == {
        "version": "1.0",
        "predictions": [1.5, 4.0, 0.0],
        "method": "average",
    }


def test_v2_batch_answers_weighted_means_and_the_weights(client, auth):
    """/v2/predict with instances weights every row by the weights cut to its length."""
    response = client.post("/v2/predict", json={"instances": [[1, 2, 3], [2, 2, 2]]}, headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert body["version"] == "2.0"
    assert body["method"] == "weighted_average"
    assert body["weights"] == [1.0, 1.5, 2.0]
    assert body["predictions"] == [(1 + 3 + 6) / 4.5, 2.0]


def test_a_batch_of_one_row_is_still_a_batch(client, auth):
    """One row under instances answers a one-element predictions list."""
    response = client.post("/v1/predict", json={"instances": [[4, 6]]}, headers=auth)
    assert response.get_json()["predictions"] == [5.0]


def random_vector(rng, max_len):
    """Random lengths and magnitudes from 1e-300 to near the float maximum."""
    n = int(rng.integers(1, max_len + 1))
    scale = 10.0 ** rng.uniform(-300, 307)
    return (rng.standard_normal(n) * scale).tolist()


@pytest.mark.parametrize(("path", "max_len"), [("/v1/predict", 40), ("/v2/predict", 4)])
def test_batch_and_single_predictions_agree_exactly(client, auth, path, max_len):
    """Hundreds of random vectors: each row of a batch gets the very float a single body gets."""
    rng = np.random.default_rng(20240917)
    vectors = [random_vector(rng, max_len) for _ in range(240)]
    vectors += [[1.7e308, 1.7e308, -1.7e308, 1.7e308][:max_len], [5e-324] * min(max_len, 3)]
    singles = []
    for vector in vectors:
        response = client.post(path, json=vector, headers=auth)
        assert response.status_code == 200, response.get_json()
        singles.append(response.get_json()["prediction"])
    by_length = {}
    for i, vector in enumerate(vectors):
        by_length.setdefault(len(vector), []).append(i)
    for indices in by_length.values():
        batch = {"instances": [vectors[i] for i in indices]}
        response = client.post(path, json=batch, headers=auth)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["predictions"] == [singles[i] for i in indices]
    assert all(np.isfinite(singles))


@pytest.mark.parametrize("path", ENDPOINTS)
def test_batch_at_max_batch_passes_and_one_more_row_is_a_422(make_app, path):
    """MLAPI_MAX_BATCH rows are accepted; one row more is a 422 naming the bound."""
    client, auth = client_for(make_app(MAX_BATCH=3))
    ok = client.post(path, json={"instances": [[1.0]] * 3}, headers=auth)
    assert ok.status_code == 200
    assert len(ok.get_json()["predictions"]) == 3
    body = assert_problem(client.post(path, json={"instances": [[1.0]] * 4}, headers=auth), 422)
    assert "at most 3 rows" in body["detail"]
    assert body["errors"][0]["pointer"] == "/instances"


def test_default_max_batch_is_1000(client, auth):
    """Without configuration 1000 rows pass and 1001 are refused."""
    ok = client.post("/v1/predict", json={"instances": [[1]] * 1000}, headers=auth)
    assert ok.status_code == 200 and len(ok.get_json()["predictions"]) == 1000
    response = client.post("/v1/predict", json={"instances": [[1]] * 1001}, headers=auth)
    assert "at most 1000 rows" in assert_problem(response, 422)["detail"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_rows_of_unequal_length_are_a_422_pointing_at_each(client, auth, path):
    """Rows must all be as long as the first; each offender gets a pointer."""
    body = {"instances": [[1, 2], [1, 2, 3], [1, 2], [1]]}
    problem = assert_problem(client.post(path, json=body, headers=auth), 422)
    assert [e["pointer"] for e in problem["errors"]] == ["/instances/1", "/instances/3"]
    assert "should have 2 items like row 0, got 3" in problem["detail"]
    assert "(and 1 more)" in problem["detail"]


BAD_BATCHES = {
    "empty instances": ('{"instances": []}', "/instances", "at least 1 item"),
    "instances not a list": ('{"instances": [1, 2]}', "/instances/0", "valid list"),
    "instances null": ('{"instances": null}', "/instances", "valid list"),
    "empty row": ('{"instances": [[1], []]}', "/instances/1", "at least 1 item"),
    "NaN": ('{"instances": [[1], [NaN]]}', "/instances/1/0", "finite number"),
    "Infinity": ('{"instances": [[Infinity]]}', "/instances/0/0", "finite number"),
    "overflow": ('{"instances": [[1e400]]}', "/instances/0/0", "finite number"),
    "boolean": ('{"instances": [[true]]}', "/instances/0/0", "valid number"),
    "numeric string": ('{"instances": [["1.5"]]}', "/instances/0/0", "valid number"),
    "null item": ('{"instances": [[1, null]]}', "/instances/0/1", "valid number"),
    "nested row": ('{"instances": [[[1]]]}', "/instances/0/0", "valid number"),
    "extra key": ('{"instances": [[1]], "model": "x"}', "/model", "Extra inputs"),
}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_each_row_obeys_the_single_body_rules(client, auth, path, case):
    """Every rule of a single body applies to each row, with a pointer into the batch."""
    raw, where, message = BAD_BATCHES[case]
    response = client.post(path, data=raw, headers={**auth, "Content-Type": "application/json"})
    body = assert_problem(response, 422)
    assert body["type"] == "/problems/validation-error"
    assert message in body["detail"]
    assert body["errors"][0]["pointer"] == where


def test_rows_over_max_features_are_a_422(make_app):
    """A row longer than MLAPI_MAX_FEATURES is refused with a pointer to it."""
    client, auth = client_for(make_app(MAX_FEATURES=3))
    body = {"instances": [[1, 2, 3, 4], [1, 2, 3, 4]]}
    problem = assert_problem(client.post("/v1/predict", json=body, headers=auth), 422)
    assert [e["pointer"] for e in problem["errors"]] == ["/instances/0", "/instances/1"]
    assert "at most 3 items" in problem["detail"]


def test_v2_batch_over_four_features_is_a_422(client, auth):
    """The weighted average's four-feature cap holds for batches too."""
    response = client.post("/v2/predict", json={"instances": [[1, 2, 3, 4, 5]]}, headers=auth)
    assert "at most 4 features" in assert_problem(response, 422)["detail"]


def test_an_object_without_instances_is_still_judged_as_a_single_body(client, auth):
    """{"features": [...]} is a 422 saying a list is expected, as before batches existed."""
    response = client.post("/v1/predict", json={"features": [1, 2]}, headers=auth)
    assert "valid list" in assert_problem(response, 422)["detail"]


def test_a_batch_is_counted_per_row_in_predictions_total(client, auth):
    """predictions_total grows by the number of rows a batch carries."""
    counter = PREDICTIONS.labels("v1", "average", "")
    before = counter._value.get()
    client.post("/v1/predict", json={"instances": [[1], [2], [3]]}, headers=auth)
    assert counter._value.get() - before == 3


def remaining(response):
    return int(response.headers["X-RateLimit-Remaining"])


def limited_client(make_app, **settings):
    return client_for(make_app(PREDICT_RATE_LIMIT="10/minute", **settings))


def test_a_batch_costs_one_request_by_default(make_app):
    """Without MLAPI_BATCH_COUNTS_ROWS a batch of 4 rows costs 1 of the per-user limit."""
    client, auth = limited_client(make_app)
    response = client.post("/v1/predict", json={"instances": [[1]] * 4}, headers=auth)
    assert response.status_code == 200
    assert remaining(response) == 9


def test_with_batch_counts_rows_a_batch_costs_its_rows(make_app):
    """With MLAPI_BATCH_COUNTS_ROWS each row costs one request, and a bare array costs one."""
    client, auth = limited_client(make_app, BATCH_COUNTS_ROWS=True)
    first = client.post("/v1/predict", json={"instances": [[1]] * 4}, headers=auth)
    assert (first.status_code, remaining(first)) == (200, 6)
    second = client.post("/v2/predict", json={"instances": [[1]] * 4}, headers=auth)
    assert (second.status_code, remaining(second)) == (200, 2)
    third = client.post("/v1/predict", json={"instances": [[1]] * 4}, headers=auth)
    assert_problem(third, 429)
    single = client.post("/v1/predict", json=[1], headers=auth)
    assert (single.status_code, remaining(single)) == (200, 1)


def test_with_batch_counts_rows_a_refused_oversized_batch_costs_one(make_app):
    """A batch over MLAPI_MAX_BATCH gets its 422, not a 429, and costs one request."""
    client, auth = limited_client(make_app, BATCH_COUNTS_ROWS=True, MAX_BATCH=20)
    response = client.post("/v1/predict", json={"instances": [[1]] * 21}, headers=auth)
    assert_problem(response, 422)
    assert remaining(response) == 9


def test_with_batch_counts_rows_an_unreadable_body_costs_one(make_app):
    """A body the cost function cannot parse costs 1 and still gets its 400."""
    client, auth = limited_client(make_app, BATCH_COUNTS_ROWS=True)
    response = client.post(
        "/v1/predict", data="{", headers={**auth, "Content-Type": "application/json"}
    )
    assert_problem(response, 400)
    assert remaining(response) == 9


def test_the_openapi_document_describes_the_batch_body(client):
    """/openapi.json renders, and /v1/predict takes an array or an instances object."""
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    schemas = document["components"]["schemas"]
    for path in ENDPOINTS:
        ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        body = schemas[ref["schema"]["$ref"].rsplit("/", 1)[1]]
        variants = body["anyOf"]
        assert variants[0]["type"] == "array"
        instances = schemas[variants[1]["$ref"].rsplit("/", 1)[1]]
        assert instances["required"] == ["instances"]
