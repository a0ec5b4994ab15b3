"""mlapi under a real gunicorn, driven by the real ``tritonclient.http``: the Open
Inference Protocol routes work with that client, and its answers are numpy's."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers import LINEAR, forest, write_version

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USERNAME, PASSWORD = "triton", "correct-horse-battery"
ADMIN = "operator"

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_live(base, process, log_path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/health/live", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            # TimeoutError: connected while the worker was still booting (a loaded host).
            time.sleep(0.2)
    pytest.fail(f"gunicorn was not live after {timeout}s:\n{log_path.read_text()}")


@pytest.fixture
def server(tmp_path):
    """gunicorn on a free loopback port with a repository (an ONNX forest at versions 1
    and 2, labelled stable and canary, and a flat JSON linear model), a user and an admin."""
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "price.json").write_text(json.dumps(LINEAR))
    config = {"version_policy": {"all": {}}, "labels": {"stable": "1", "canary": "2"}}
    write_version(model_dir, "forest", 1, config=config)
    write_version(model_dir, "forest", 2)
    (tmp_path / "prometheus").mkdir()
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLAPI_")}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        MLAPI_INSTANCE_PATH=str(tmp_path / "instance"),
        MLAPI_MODEL_DIR=str(model_dir),
        MLAPI_SECRET_KEY="s" * 48,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
    )
    for user, extra in ((USERNAME, []), (ADMIN, ["--admin"])):
        subprocess.run(
            [BIN / "flask", "--app", "wsgi", "users", "create", user, "--password", PASSWORD]
            + extra,
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [BIN / "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_live(base, process, log_path)
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def bearer(base, username=USERNAME):
    form = urllib.parse.urlencode({"username": username, "password": PASSWORD}).encode()
    with urllib.request.urlopen(f"{base}/token", data=form, timeout=10) as response:
        return {"Authorization": f"Bearer {json.load(response)['access_token']}"}


def post_json(base, path, body, headers):
    request = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


WEIGHTS = np.array(LINEAR["weights"])
REFERENCES = {
    "average": (5, lambda x: np.average(x, axis=1)),
    "weighted_average": (4, lambda x: np.average(x, axis=1, weights=[1.0, 1.5, 2.0, 0.5])),
    "price": (3, lambda x: np.sum(x * WEIGHTS, axis=1) + LINEAR["bias"]),
}


def test_tritonclient_against_gunicorn(server):
    """Health, metadata and FP32/FP64 batched inference through tritonclient equal numpy,
    JSON and binary both ways."""
    headers = bearer(server)
    url = server.removeprefix("http://")
    with httpclient.InferenceServerClient(url=url) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.get_server_metadata() == {
            "name": "mlapi",
            "version": "1.0.0",
            "extensions": ["binary_tensor_data", "model_repository", "statistics"],
        }
        for name in REFERENCES:
            assert client.is_model_ready(name)
        assert client.is_model_ready("price", "1")
        assert not client.is_model_ready("price", "2")
        assert not client.is_model_ready("nope")

        metadata = client.get_model_metadata("price", headers=headers)
        assert metadata == {
            "name": "price",
            "versions": ["1"],
            "platform": "numpy",
            "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 3]}],
            "outputs": [{"name": "prediction", "datatype": "FP64", "shape": [-1]}],
        }
        assert client.get_model_metadata("price", "1", headers=headers) == metadata

        rng = np.random.default_rng(11)
        for name, (width, reference) in REFERENCES.items():
            for datatype, dtype in (("FP32", np.float32), ("FP64", np.float64)):
                for binary in (False, True):
                    x = (rng.standard_normal((16, width)) * 1e3).astype(dtype)
                    features = httpclient.InferInput("features", list(x.shape), datatype)
                    features.set_data_from_numpy(x, binary_data=binary)
                    result = client.infer(
                        name,
                        [features],
                        request_id=f"{name}-{datatype}",
                        outputs=[httpclient.InferRequestedOutput("prediction", binary_data=binary)],
                        # infer() writes Inference-Header-Content-Length into the dict
                        # it is given: a shared dict would carry it to the next call.
                        headers=dict(headers),
                    )
                    got = result.as_numpy("prediction")
                    assert got.dtype == np.float64 and got.shape == (16,)
                    np.testing.assert_array_equal(got, reference(x.astype(np.float64)))
                    response = result.get_response()
                    assert response["model_name"] == name
                    assert response["id"] == f"{name}-{datatype}"

        # tritonclient's defaults: binary inputs, and binary outputs when none are named.
        x = np.arange(6, dtype=np.float64).reshape(2, 3)
        features = httpclient.InferInput("features", [2, 3], "FP64")
        features.set_data_from_numpy(x)
        result = client.infer("price", [features], model_version="1", headers=dict(headers))
        np.testing.assert_array_equal(result.as_numpy("prediction"), REFERENCES["price"][1](x))
        assert result.get_output("prediction")["parameters"] == {"binary_data_size": 16}

        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_metadata("nope", headers=headers)
        assert unknown.value.status() == "404"
        assert unknown.value.message() == "Model 'nope' is not loaded."

        wrong = httpclient.InferInput("features", [2, 3], "BYTES")
        wrong.set_data_from_numpy(np.array([[b"a"] * 3] * 2, dtype=object))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("price", [wrong], headers=dict(headers))
        assert refused.value.status() == "400"
        assert refused.value.message() == "Input 'features' must hold numbers, not object."

    single = post_json(server, "/v1/predict", [1.0, 2.0, 4.5], headers)
    batch = post_json(server, "/v1/predict", {"instances": [[1.0, 2.0, 4.5], [3, 3, 3]]}, headers)
    assert single == {"version": "1.0", "prediction": 2.5, "method": "average"}
    assert batch == {"version": "1.0", "predictions": [2.5, 3.0], "method": "average"}


def test_tritonclient_serves_an_onnx_forest_with_its_defaults(server):
    """An ONNX random forest made by skl2onnx: binary tensors both ways (tritonclient's
    defaults), versions and labels, statistics, and the repository extension."""
    headers = bearer(server)
    admin = bearer(server, ADMIN)
    estimator, _ = forest()
    url = server.removeprefix("http://")
    x = np.random.default_rng(5).normal(size=(64, 4)).astype(np.float32)
    with httpclient.InferenceServerClient(url=url) as client:
        assert client.is_model_ready("forest")
        assert client.is_model_ready("forest", "stable")
        metadata = client.get_model_metadata("forest", headers=headers)
        assert metadata["platform"] == "onnxruntime_onnx"
        assert metadata["versions"] == ["1", "2"]
        assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]

        for version, served_as in ((None, "2"), ("stable", "1"), ("canary", "2"), ("1", "1")):
            features = httpclient.InferInput("X", list(x.shape), "FP32")
            features.set_data_from_numpy(x)
            kwargs = {"model_version": version} if version else {}
            result = client.infer("forest", [features], headers=dict(headers), **kwargs)
            assert result.get_response()["model_version"] == served_as
            got = result.as_numpy("variable")
            assert got.dtype == np.float32 and got.shape == (64, 1)
            np.testing.assert_allclose(got[:, 0], estimator.predict(x), rtol=1e-5)

        stats = client.get_inference_statistics("forest", "1", headers=headers)
        [entry] = stats["model_stats"]
        assert entry["execution_count"] == 2 and entry["inference_count"] == 128
        assert entry["inference_stats"]["success"]["ns"] > 0

        with pytest.raises(InferenceServerException) as forbidden:
            client.unload_model("forest", headers=headers)
        assert forbidden.value.status() == "403"
        client.unload_model("forest", headers=admin)
        assert not client.is_model_ready("forest")
        client.load_model("forest", headers=admin)
        assert client.is_model_ready("forest")
        index = client.get_model_repository_index(headers=admin)
        assert {"name": "forest", "version": "1", "state": "READY"} in index
