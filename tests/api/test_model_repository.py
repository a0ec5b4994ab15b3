"""A model repository served through the Open Inference Protocol: ONNX models, versions,
labels, broken models reported not-ready, the repository and statistics extensions."""

import json

import numpy as np
import pytest

from mlapi.predictions import registry, reloader
from tests.helpers import LINEAR, forest, write_version


@pytest.fixture
def repository(tmp_path):
    """forest/1 and forest/2 (ONNX, labels stable=1, canary=2, max batch 8), price/3
    (linear JSON), broken/1 (not an ONNX graph), a flat price file, and a pickle."""
    root = tmp_path / "repository"
    config = {
        "version_policy": {"all": {}},
        "labels": {"stable": "1", "canary": "2"},
        "max_batch_size": 8,
    }
    write_version(root, "forest", 1, config=config)
    write_version(root, "forest", 2)
    write_version(root, "linear", 3, "model.json", json.dumps(LINEAR))
    write_version(root, "broken", 1, content=b"not a graph")
    write_version(root, "pickled", 1, "model.pkl", content=b"\x80\x04K\x01.")
    (root / "flat.json").write_text(json.dumps({**LINEAR, "name": "flat"}))
    return root


@pytest.fixture
def served(make_app, repository):
    return make_app(MODEL_DIR=str(repository))


@pytest.fixture
def http(served):
    return served.test_client()


def infer_forest(http, auth, x, path="/v2/models/forest/infer", **extra):
    body = {
        "inputs": [
            {"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        **extra,
    }
    return http.post(path, json=body, headers=auth)


@pytest.fixture
def auth(served, make_user, login):
    make_user("alice")
    return login("alice")


@pytest.fixture
def admin(served, make_user, login):
    make_user("root", role="admin")
    return login("root")


def test_an_onnx_forest_answers_as_scikit_learn_does(http, auth):
    estimator, _ = forest()
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    response = infer_forest(http, auth, x, id="r1")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model_name"] == "forest" and body["model_version"] == "2"
    assert body["id"] == "r1"
    [output] = body["outputs"]
    assert output["name"] == "variable" and output["datatype"] == "FP32"
    assert output["shape"] == [5, 1]
    np.testing.assert_allclose(np.ravel(output["data"]), estimator.predict(x), rtol=1e-5)


def test_metadata_comes_from_the_graph_and_the_config(http, auth):
    response = http.get("/v2/models/forest/versions/stable", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {
        "name": "forest",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}],
        "parameters": {"labels": {"stable": "1", "canary": "2"}, "max_batch_size": 8},
    }


@pytest.mark.parametrize(("version", "served_as"), [("1", "1"), ("stable", "1"), ("canary", "2")])
def test_versions_and_labels_route_to_a_version(http, auth, version, served_as):
    x = np.zeros((1, 4), dtype=np.float32)
    response = infer_forest(http, auth, x, f"/v2/models/forest/versions/{version}/infer")
    assert response.status_code == 200
    assert response.get_json()["model_version"] == served_as
    assert http.get(f"/v2/models/forest/versions/{version}/ready").status_code == 200


def test_the_max_batch_size_of_the_config_is_enforced(http, auth):
    response = infer_forest(http, auth, np.zeros((9, 4), dtype=np.float32))
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "Input 'X' has a batch of 9 rows; model 'forest' takes at most 8 per request."
    }


def test_a_wrong_datatype_for_the_graph_is_400(http, auth):
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP64", "data": [0] * 4}]}
    response = http.post("/v2/models/forest/infer", json=body, headers=auth)
    assert response.status_code == 400
    assert response.get_json() == {"error": "Input 'X' is FP32; got FP64."}


def test_a_linear_model_in_a_version_folder_is_named_by_its_folders(http, auth):
    body = {
        "inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]
    }
    response = http.post("/v2/models/linear/versions/3/infer", json=body, headers=auth)
    assert response.status_code == 200
    assert response.get_json()["outputs"][0]["data"] == [2.0 - 1.0 + 0.75 + 1.5]
    assert http.get("/v2/models/flat/ready").status_code == 200


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("broken", "broken/1/model.onnx: not a readable ONNX model"),
        ("pickled", "model.pkl is refused: a pickle runs code"),
    ],
)
def test_a_broken_model_is_not_ready_with_its_reason(http, auth, served, name, reason):
    """The server starts and serves the rest; the broken model says why it is not ready."""
    ready = http.get(f"/v2/models/{name}/ready")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["ready"] is False and reason in body["error"]
    assert str(served.config["MODEL_DIR"]) not in body["error"]
    infer = http.post(f"/v2/models/{name}/infer", json={"inputs": []}, headers=auth)
    assert infer.status_code == 503 and reason in infer.get_json()["error"]

    health = http.get("/health/ready")
    assert health.status_code == 200
    unavailable = health.get_json()["checks"]["models"]["unavailable"]
    assert any(reason in text for text in unavailable.values())


def test_an_unknown_model_is_still_404(http):
    assert http.get("/v2/models/nope/ready").status_code == 404


def test_the_repository_index_is_admin_only_and_lists_every_state(http, auth, admin):
    assert http.post("/v2/repository/index", headers=auth).status_code == 403
    response = http.post("/v2/repository/index", headers=admin)
    assert response.status_code == 200
    entries = {(e["name"], e.get("version")): e for e in response.get_json()}
    assert entries[("forest", "1")]["state"] == "READY"
    assert entries[("forest", "2")]["state"] == "READY"
    assert entries[("broken", "1")]["state"] == "UNAVAILABLE"
    assert "not a readable ONNX model" in entries[("broken", "1")]["reason"]


def test_unload_then_load_a_model(http, auth, admin):
    response = http.post("/v2/repository/models/forest/unload", headers=admin)
    assert response.status_code == 200, response.get_data(as_text=True)
    ready = http.get("/v2/models/forest/ready")
    assert ready.status_code == 503 and "unloaded by an administrator" in ready.get_json()["error"]

    response = http.post("/v2/repository/models/forest/load", headers=admin)
    assert response.status_code == 200
    assert {e["version"] for e in response.get_json()["models"]} == {"1", "2"}
    assert http.get("/v2/models/forest/ready").status_code == 200


def test_loading_a_broken_or_unknown_model_says_why(http, admin):
    broken = http.post("/v2/repository/models/broken/load", headers=admin)
    assert broken.status_code == 400
    assert "not a readable ONNX model" in broken.get_json()["error"]
    unknown = http.post("/v2/repository/models/nope/load", headers=admin)
    assert unknown.status_code == 404


def test_a_new_version_is_served_after_a_poll_and_held_models_finish(
    http, auth, served, repository
):
    with served.app_context():
        held = registry().get("forest")
        write_version(repository, "forest", 3)
        reloader().poll()
        assert registry().get("forest").version == "3"
    x = np.zeros((2, 4), dtype=np.float32)
    assert held.infer({"X": x})["variable"].shape == (2, 1)
    response = infer_forest(http, auth, x)
    assert response.get_json()["model_version"] == "3"


def test_statistics_count_successes_failures_and_rows(http, auth):
    before = http.get("/v2/models/forest/versions/2/stats", headers=auth).get_json()
    infer_forest(http, auth, np.zeros((3, 4), dtype=np.float32))
    bad = {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [0] * 3}]}
    http.post("/v2/models/forest/infer", json=bad, headers=auth)
    after = http.get("/v2/models/forest/versions/2/stats", headers=auth).get_json()
    [old], [new] = before["model_stats"], after["model_stats"]
    assert new["inference_count"] - old["inference_count"] == 3
    assert new["execution_count"] - old["execution_count"] == 1
    success, fail = new["inference_stats"]["success"], new["inference_stats"]["fail"]
    assert success["count"] - old["inference_stats"]["success"]["count"] == 1
    assert success["ns"] > old["inference_stats"]["success"]["ns"]
    assert fail["count"] - old["inference_stats"]["fail"]["count"] == 1
    every = http.get("/v2/models/forest/stats", headers=auth).get_json()
    assert [entry["version"] for entry in every["model_stats"]] == ["1", "2"]


def test_flask_models_list_shows_broken_models_with_the_reason(served):
    result = served.test_cli_runner().invoke(args=["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:3] == ["forest", "2", "yes"] for line in lines)
    broken = next(line for line in lines if line.split()[:2] == ["broken", "1"])
    assert broken.split()[:3] == ["broken", "1", "no"]
    assert "not a readable ONNX model" in broken


def test_flask_models_check_an_onnx_file_runs_it_on_zeros(served, repository):
    path = repository / "forest" / "2" / "model.onnx"
    result = served.test_cli_runner().invoke(args=["models", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "input  X FP32 [-1, 4]" in result.output
    assert "output variable FP32 [-1, 1]" in result.output
    assert "variable on zeros: [" in result.output


def test_flask_models_check_a_repository_reports_each_model(served, repository):
    result = served.test_cli_runner().invoke(args=["models", "check", str(repository)])
    assert result.exit_code == 1
    assert "ok      forest:1" in result.output and "ok      linear:3" in result.output
    assert "failed  broken/1: " in result.output
    assert "cannot be served" in result.output


def test_flask_models_unload_and_load_change_what_is_served(served):
    runner = served.test_cli_runner()
    result = runner.invoke(args=["models", "unload", "forest"])
    assert result.exit_code == 0, result.output
    with served.app_context():
        assert "unloaded by an administrator" in registry().failure("forest")
    result = runner.invoke(args=["models", "load", "forest"])
    assert result.exit_code == 0, result.output
    assert "ok      forest:1" in result.output and "ok      forest:2" in result.output
    broken = runner.invoke(args=["models", "load", "broken"])
    assert broken.exit_code == 1 and "not a readable ONNX model" in broken.output


def typed_graph():
    """Identity on an INT64 and a BYTES (string) input, Not on a BOOL input."""
    from onnx import TensorProto, helper

    def tensor(name, kind):
        return helper.make_tensor_value_info(name, kind, ["batch", 2])

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["count"], ["count_out"]),
            helper.make_node("Not", ["flag"], ["flag_out"]),
            helper.make_node("Identity", ["text"], ["text_out"]),
        ],
        "typed",
        [
            tensor("count", TensorProto.INT64),
            tensor("flag", TensorProto.BOOL),
            tensor("text", TensorProto.STRING),
        ],
        [
            tensor("count_out", TensorProto.INT64),
            tensor("flag_out", TensorProto.BOOL),
            tensor("text_out", TensorProto.STRING),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model.SerializeToString()


def test_int64_bool_and_bytes_tensors_as_json_and_binary(make_app, tmp_path, make_user, login):
    import tritonclient.http as httpclient

    root = tmp_path / "typed-repository"
    write_version(root, "typed", 1, content=typed_graph())
    app = make_app(MODEL_DIR=str(root))
    http = app.test_client()
    make_user("bob")
    auth = login("bob")
    metadata = http.get("/v2/models/typed", headers=auth).get_json()
    assert [t["datatype"] for t in metadata["inputs"]] == ["INT64", "BOOL", "BYTES"]

    count = np.array([[1, -2], [2**40, 0]], dtype=np.int64)
    flag = np.array([[True, False], [False, False]])
    text = np.array([[b"a", "é".encode()], [b"", b"xyz"]], dtype=object)
    inputs = []
    for name, array, datatype in (
        ("count", count, "INT64"),
        ("flag", flag, "BOOL"),
        ("text", text, "BYTES"),
    ):
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)  # binary, tritonclient's default
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n) for n in ("count_out", "flag_out", "text_out")]
    body, header_length = httpclient.InferenceServerClient.generate_request_body(inputs, outputs)
    response = http.post(
        "/v2/models/typed/infer",
        data=body,
        headers={**auth, "Inference-Header-Content-Length": str(header_length)},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    result = httpclient.InferenceServerClient.parse_response_body(
        response.get_data(), header_length=int(response.headers["Inference-Header-Content-Length"])
    )
    np.testing.assert_array_equal(result.as_numpy("count_out"), count)
    np.testing.assert_array_equal(result.as_numpy("flag_out"), ~flag)
    assert result.as_numpy("text_out").tolist() == text.tolist()

    as_json = {
        "inputs": [
            {"name": "count", "shape": [1, 2], "datatype": "INT64", "data": [3, 4]},
            {"name": "flag", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]},
            {"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["x", "é"]},
        ]
    }
    response = http.post("/v2/models/typed/infer", json=as_json, headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["outputs"] == [
        {"name": "count_out", "datatype": "INT64", "shape": [1, 2], "data": [3, 4]},
        {"name": "flag_out", "datatype": "BOOL", "shape": [1, 2], "data": [False, True]},
        {"name": "text_out", "datatype": "BYTES", "shape": [1, 2], "data": ["x", "é"]},
    ]


def test_a_regressor_graph_serves_feature_vectors_and_its_cache(http, auth):
    """/predict-cached?model= takes a feature vector for an ONNX regressor (one FP32 input
    [batch, features], one value per row): the same value as infer, then from the cache."""
    estimator, _ = forest()
    row = [0.5, -1.0, 2.0, 0.25]
    expected = float(estimator.predict(np.array([row], dtype=np.float32))[0])
    first = http.post("/predict-cached?model=forest", json=row, headers=auth)
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.get_json()["cached"] is False
    assert first.get_json()["prediction"] == pytest.approx(expected, rel=1e-5)
    again = http.post("/predict-cached?model=forest", json=row, headers=auth).get_json()
    assert again == {**first.get_json(), "cached": True}
    inferred = infer_forest(http, auth, np.array([row], dtype=np.float32)).get_json()
    assert inferred["outputs"][0]["data"] == [first.get_json()["prediction"]]


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        ([1.0, 2.0, 3.0], "Model 'forest' accepts exactly 4 features, got 3."),
        (
            [1e300, 0.0, 0.0, 0.0],
            "Model 'forest' takes FP32 features: a value is out of its range.",
        ),
    ],
)
def test_feature_vectors_a_regressor_graph_cannot_take_are_422(http, auth, row, detail):
    response = http.post("/predict-cached?model=forest", json=row, headers=auth)
    assert response.status_code == 422
    assert response.get_json()["detail"] == detail
