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

from tests.helpers import LINEAR

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USERNAME, PASSWORD = "triton", "correct-horse-battery"

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
    """gunicorn on a free loopback port with one JSON linear model and one user."""
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "price.json").write_text(json.dumps(LINEAR))
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
    subprocess.run(
        [BIN / "flask", "--app", "wsgi", "users", "create", USERNAME, "--password", PASSWORD],
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


def bearer(base):
    form = urllib.parse.urlencode({"username": USERNAME, "password": PASSWORD}).encode()
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
    """Health, metadata and FP32/FP64 batched inference through tritonclient equal numpy."""
    headers = bearer(server)
    url = server.removeprefix("http://")
    with httpclient.InferenceServerClient(url=url) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.get_server_metadata() == {
            "name": "mlapi",
            "version": "1.0.0",
            "extensions": [],
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
                x = (rng.standard_normal((16, width)) * 1e3).astype(dtype)
                features = httpclient.InferInput("features", list(x.shape), datatype)
                features.set_data_from_numpy(x, binary_data=False)
                result = client.infer(
                    name,
                    [features],
                    request_id=f"{name}-{datatype}",
                    outputs=[httpclient.InferRequestedOutput("prediction", binary_data=False)],
                    headers=headers,
                )
                got = result.as_numpy("prediction")
                assert got.dtype == np.float64 and got.shape == (16,)
                np.testing.assert_array_equal(got, reference(x.astype(np.float64)))
                response = result.get_response()
                assert response["model_name"] == name
                assert response["id"] == f"{name}-{datatype}"

        # Without requested outputs tritonclient asks for binary outputs; JSON ones still parse.
        x = np.arange(6, dtype=np.float64).reshape(2, 3)
        features = httpclient.InferInput("features", [2, 3], "FP64")
        features.set_data_from_numpy(x, binary_data=False)
        result = client.infer("price", [features], model_version="1", headers=headers)
        np.testing.assert_array_equal(result.as_numpy("prediction"), REFERENCES["price"][1](x))

        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_metadata("nope", headers=headers)
        assert unknown.value.status() == "404"
        assert unknown.value.message() == "Model 'nope' is not loaded."

        binary = httpclient.InferInput("features", [2, 3], "FP64")
        binary.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("price", [binary], headers=headers)
        assert refused.value.status() == "400"
        assert "binary_data=False" in refused.value.message()

    single = post_json(server, "/v1/predict", [1.0, 2.0, 4.5], headers)
    batch = post_json(server, "/v1/predict", {"instances": [[1.0, 2.0, 4.5], [3, 3, 3]]}, headers)
    assert single == {"version": "1.0", "prediction": 2.5, "method": "average"}
    assert batch == {"version": "1.0", "predictions": [2.5, 3.0], "method": "average"}
