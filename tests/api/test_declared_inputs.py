"""config.json's ``inputs`` name a model's inputs: the declared names are what metadata
shows and what infer takes, the file's own names stay aliases; a declaration that does
not fit the file is a clear load error."""

import json

import numpy as np
import pytest

from tests.helpers import LINEAR, forest, write_version

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
HOUSE = {"inputs": [{"name": "house", "datatype": "FP64", "shape": [-1, 3]}]}


@pytest.fixture
def http(make_app, tmp_path):
    root = tmp_path / "repository"
    write_version(root, "forest", 1, config={"inputs": [{"name": "measurements"}]})
    write_version(root, "typed", 1, config={"inputs": [{"name": "X", "datatype": "FP32"}]})
    write_version(root, "price", 1, "model.json", json.dumps(LINEAR), config=HOUSE)
    # A declared name that is not the graph's, beside a second declaration: the graph
    # has one input, so this cannot be a rename.
    two = {"inputs": [{"name": "a"}, {"name": "b"}]}
    write_version(root, "miscounted", 1, config=two)
    wrong_type = {"inputs": [{"name": "measurements", "datatype": "INT64"}]}
    write_version(root, "mistyped", 1, config=wrong_type)
    return make_app(MODEL_DIR=str(root)).test_client()


@pytest.fixture
def auth(make_user, login, http):
    make_user("alice")
    return login("alice")


def tensor(name, array, datatype="FP32"):
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.ravel().tolist(),
    }


def infer(http, auth, model, *tensors):
    return http.post(f"/v2/models/{model}/infer", json={"inputs": list(tensors)}, headers=auth)


def test_metadata_shows_the_declared_names(http, auth):
    forest_inputs = http.get("/v2/models/forest", headers=auth).get_json()["inputs"]
    assert forest_inputs == [{"name": "measurements", "datatype": "FP32", "shape": [-1, 4]}]
    price_inputs = http.get("/v2/models/price", headers=auth).get_json()["inputs"]
    assert price_inputs == [{"name": "house", "datatype": "FP64", "shape": [-1, 3]}]
    # Declaring the graph's own name only checks it.
    typed_inputs = http.get("/v2/models/typed", headers=auth).get_json()["inputs"]
    assert typed_inputs == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize("name", ["measurements", "X"])
def test_infer_takes_the_declared_name_and_the_graphs_own(http, auth, name):
    response = infer(http, auth, "forest", tensor(name, X))
    assert response.status_code == 200, response.get_json()
    expected = forest()[0].predict(X).astype(np.float32)
    np.testing.assert_allclose(response.get_json()["outputs"][0]["data"], expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["house", "features"])
def test_a_linear_model_takes_its_declared_name_and_features(http, auth, name):
    rows = np.array([[1.0, 2.0, 3.0]])
    response = infer(http, auth, "price", tensor(name, rows, "FP64"))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outputs"][0]["data"] == [2.0 - 1.0 + 0.75 + 1.5]


def test_errors_speak_of_the_declared_name(http, auth):
    response = infer(http, auth, "forest", tensor("measurements", X.astype(np.float64), "FP64"))
    assert response.status_code == 400
    assert response.get_json() == {"error": "Input 'measurements' is FP32; got FP64."}

    response = infer(http, auth, "forest", tensor("measurements", X), tensor("X", X))
    assert response.status_code == 400
    assert response.get_json() == {"error": "Input 'measurements' is sent twice (once as 'X')."}

    response = infer(http, auth, "forest", tensor("nope", X))
    assert response.status_code == 400
    assert "its inputs are measurements" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (
            "miscounted",
            "config.json declares inputs 'a', 'b'; the file's are 'X'. "
            "To rename them, declare all 1, in that order.",
        ),
        (
            "mistyped",
            "config.json declares input 'measurements' as INT64; the file's 'X' is FP32",
        ),
    ],
)
def test_a_declaration_that_does_not_fit_the_file_is_a_load_error(http, model, reason):
    response = http.get(f"/v2/models/{model}/ready")
    assert response.status_code == 503
    assert reason in response.get_json()["error"]
