"""ONNX models converted by skl2onnx and onnxmltools, loaded and run by onnxruntime."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

import mlapi.serving
from mlapi.serving import binary
from mlapi.serving.datatypes import TensorSpec
from mlapi.serving.errors import InferenceError, ModelLoadError, TensorError
from mlapi.serving.onnx import PLATFORM, check_external_data, load_onnx


def save(graph, folder, name="model.onnx", **kwargs):
    """Write an ONNX graph to ``folder/name`` (onnx.save_model's options); return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save_model(graph, str(path), **kwargs)
    return path


def matmul_graph(weights, ir_version=10):
    """y = x @ weights, with the weights as an initializer."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weights.shape[1]])],
        [numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version
    )


def test_a_random_forest_predicts_as_scikit_learn_does(forest, training_data, tmp_path):
    estimator, graph = forest
    x, _ = training_data

    model = load_onnx(save(graph, tmp_path))

    assert model.platform == PLATFORM == "onnxruntime_onnx"
    assert model.inputs == (TensorSpec("X", "FP32", (-1, 8)),)
    assert model.outputs == (TensorSpec("variable", "FP32", (-1, 1)),)
    outputs = model.predict({"X": x[:50]})
    np.testing.assert_allclose(outputs["variable"][:, 0], estimator.predict(x[:50]), rtol=1e-5)


def test_a_pipeline_gives_labels_and_probabilities(pipeline, training_data, tmp_path):
    estimator, graph = pipeline
    x, _ = training_data

    model = load_onnx(save(graph, tmp_path))

    assert [spec.metadata() for spec in model.outputs] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    outputs = model.predict({"X": x})
    np.testing.assert_array_equal(outputs["label"], estimator.predict(x))
    np.testing.assert_allclose(outputs["probabilities"], estimator.predict_proba(x), atol=1e-5)


def test_a_lightgbm_booster_converted_by_onnxmltools(booster, training_data, tmp_path):
    estimator, graph = booster
    x, _ = training_data

    model = load_onnx(save(graph, tmp_path))

    assert [spec.name for spec in model.inputs] == ["features"]
    outputs = model.predict({"features": x})
    np.testing.assert_array_equal(outputs["label"], estimator.predict(x))
    np.testing.assert_allclose(outputs["probabilities"], estimator.predict_proba(x), atol=1e-5)


def test_a_zipmap_output_is_refused_with_the_conversion_option(training_data, tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = training_data
    graph = to_onnx(LogisticRegression().fit(x, y), x[:1], target_opset=17)

    with pytest.raises(ModelLoadError, match=r"seq\(map.*zipmap=False"):
        load_onnx(save(graph, tmp_path))


def test_bytes_tensors_go_in_and_out_as_text(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, [None])],
    )
    model = load_onnx(
        save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
            tmp_path,
        )
    )

    assert model.inputs == (TensorSpec("text", "BYTES", (-1,)),)
    outputs = model.predict({"text": np.array([b"caf\xc3\xa9", b""], dtype=object)})
    assert outputs["same"].tolist() == ["café", ""]
    with pytest.raises(TensorError, match="must hold UTF-8 text"):
        model.predict({"text": np.array([b"\xff"], dtype=object)})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"X": np.zeros((2, 8))}, "Input 'X' is FP32; got FP64"),
        ({"X": np.zeros(8, dtype=np.float32)}, r"shape \[8\]; the model takes \[-1, 8\]"),
        ({"X": np.zeros((1, 7), dtype=np.float32)}, r"shape \[1, 7\]; the model takes \[-1, 8\]"),
        ({}, "Input 'X' is missing; the model takes X"),
        (
            {"X": np.zeros((1, 8), np.float32), "Y": np.zeros(1)},
            "no input 'Y'; its inputs are X",
        ),
        ({"X": np.array([["a"] * 8])}, "Input 'X' is FP32; got"),
    ],
)
def test_inputs_that_do_not_fit_the_graph_are_refused(forest, tmp_path, inputs, message):
    model = load_onnx(save(forest[1], tmp_path))

    with pytest.raises(TensorError, match=message):
        model.predict(inputs)


def test_an_input_the_runtime_refuses_is_an_inference_error(tmp_path):
    # The graph declares [batch, 3] but reshapes to a fixed 2 x 3: a batch of 3 fails at run.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "shape")],
    )
    model = load_onnx(
        save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
            tmp_path,
        )
    )

    assert model.predict({"x": np.ones((2, 3), np.float32)})["y"].shape == (2, 3)
    with pytest.raises(InferenceError, match="cannot compute these inputs") as caught:
        model.predict({"x": np.ones((3, 3), np.float32)})
    assert "onnxruntime" not in str(caught.value)  # no source paths for the client
    assert "cannot be reshaped" in caught.value.log_detail  # the log gets the runtime's reason


def test_weights_in_an_external_file_beside_the_model_are_memory_mapped(tmp_path):
    weights = np.arange(64 * 256, dtype=np.float32).reshape(64, 256) / 1000
    path = save(
        matmul_graph(weights),
        tmp_path / "model",
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )

    model = load_onnx(path)

    assert check_external_data(path) == [str(tmp_path / "model" / "weights.bin")]
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(model.predict({"x": x})["y"], x @ weights, rtol=1e-5)
    # Mapped, not copied: the workers of one host share these pages.
    maps = [m.path for m in psutil.Process().memory_maps(grouped=True)]
    assert str(tmp_path / "model" / "weights.bin") in maps


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 64 * 4)
    folder = tmp_path / "model"
    path = save(
        matmul_graph(np.ones((8, 8), np.float32)),
        folder,
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    graph = onnx.load_model(str(path), load_external_data=False)
    location = {"parent": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[where]
    if where == "symlink":
        os.symlink(secret, folder / "link.bin")
    for entry in graph.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    save(graph, folder)

    with pytest.raises(ModelLoadError, match=r"keeps its data in .*outside the model's folder"):
        load_onnx(path)
    # onnxruntime 1.31 refuses these paths too: a second line of defence, not the only one.
    import onnxruntime

    with pytest.raises(Exception, match="External data path validation failed"):
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a protobuf at all", "not a readable ONNX model"),
        (matmul_graph(np.ones((2, 2), np.float32), ir_version=99), "onnxruntime cannot load"),
    ],
)
def test_unreadable_models_are_model_file_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    path.write_bytes(content if isinstance(content, bytes) else content.SerializeToString())

    with pytest.raises(ModelLoadError, match=message) as caught:
        load_onnx(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        load_onnx(tmp_path / "absent.onnx")


@pytest.mark.parametrize("threads", [1, 3])
def test_sessions_compute_on_the_configured_number_of_threads(forest, tmp_path, threads):
    path = save(forest[1], tmp_path)
    load_onnx(path)  # onnxruntime's first session in a process starts a thread of its own
    process = psutil.Process()
    before = process.num_threads()

    model = load_onnx(path, intra_op_threads=threads)

    options = model.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)
    # Prepacked weights would be a private copy per worker instead of shared mapped pages.
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # The calling thread is one of the intra-op threads: N threads start N - 1 more.
    assert process.num_threads() - before == threads - 1


def test_the_serving_modules_import_no_runtime_until_a_model_needs_one():
    code = (
        "import sys; import mlapi.serving.onnx, mlapi.serving.binary, mlapi.serving.repository; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('onnx', 'onnxruntime', 'lightgbm', 'xgboost', 'sklearn', 'skl2onnx')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_the_serving_package_imports_nothing_of_the_web_layer():
    """serving/ knows no HTTP: no Flask, no werkzeug, nothing of mlapi outside serving/."""
    folder = Path(mlapi.serving.__file__).parent
    imported = set()
    for source in folder.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
    assert "numpy" in imported and "onnxruntime" in imported  # the walk sees imports
    assert not {
        name
        for name in imported
        if name.split(".")[0] in ("flask", "werkzeug", "flask_jwt_extended")
        or (name.startswith("mlapi") and not name.startswith("mlapi.serving"))
    }


def test_a_tritonclient_binary_request_runs_end_to_end(pipeline, training_data, tmp_path):
    """tritonclient's body -> decode -> ONNX pipeline -> encode -> tritonclient's parser."""
    estimator, graph = pipeline
    x, _ = training_data
    model = load_onnx(save(graph, tmp_path))
    rows = x[:5]
    tensor = httpclient.InferInput("X", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [tensor], request_id="r-1"
    )

    request = binary.decode_request(body, str(header_length))
    outputs = model.predict(request.inputs)
    selected = binary.select_outputs(request, [spec.name for spec in model.outputs])
    response, response_length = binary.encode_response(
        {"model_name": "m", "model_version": "1", "id": request.id},
        {name: outputs[name] for name, _ in selected},
        {name for name, as_binary in selected if as_binary},
    )

    result = httpclient.InferenceServerClient.parse_response_body(
        response, header_length=response_length
    )
    assert result.get_response()["id"] == "r-1"
    np.testing.assert_array_equal(result.as_numpy("label"), estimator.predict(rows))
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), estimator.predict_proba(rows), atol=1e-5
    )


def test_an_xgboost_booster_converted_by_onnxmltools(training_data, tmp_path):
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = training_data
    estimator = xgboost.XGBClassifier(n_estimators=20, max_depth=4, n_jobs=1).fit(x, y)
    graph = onnxmltools.convert_xgboost(
        estimator, initial_types=[("features", FloatTensorType([None, 8]))], target_opset=15
    )

    model = load_onnx(save(graph, tmp_path))

    outputs = model.predict({"features": x})
    np.testing.assert_array_equal(outputs["label"], estimator.predict(x))
    np.testing.assert_allclose(outputs["probabilities"], estimator.predict_proba(x), atol=1e-5)
