"""mlapi under a real gunicorn, driven by KServe's own Python client (``kserve`` 0.21.0).

KServe's ``InferenceRESTClient`` speaks REST v2 with binary tensors (the binary tensor
data extension, as tritonclient does) and asks the server whether it is live and
ready and whether a model is ready. It has no call for model metadata: the test reads
that route directly and checks it against what the client then sends.

The ``kserve`` package is installed without its dependencies (requirements-kserve.txt:
every release pins psutil<6 and pulls its model server). Importing ``kserve`` runs
that server's imports, so :func:`kserve_client` loads the client modules alone.
"""

import asyncio
import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import requests

from tests.helpers import forest, write_version

pytestmark = pytest.mark.slow

PASSWORD = "kserve-client-pass-1"


def kserve_client():
    """kserve's REST client and tensor modules, without running ``kserve/__init__.py``.

    The package's ``__init__`` imports its model server (uvicorn, kubernetes, ray...),
    which is not installed; its client modules need only requirements-kserve.txt.
    """
    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    client = importlib.import_module("kserve.inference_client")
    tensors = importlib.import_module("kserve.protocol.infer_type")
    return client, tensors


@pytest.fixture
def server(servers, tmp_path):
    """gunicorn serving the ONNX forest (input X, FP32 [-1, 4]) at versions 1 and 2."""
    repository = tmp_path / "repository"
    write_version(repository, "forest", 1, config={"version_policy": {"all": {}}})
    write_version(repository, "forest", 2)
    env = {"MLAPI_MODEL_DIR": str(repository), "MLAPI_PREDICT_RATE_LIMIT": "100000/minute"}
    server = servers(env=env, name="kserve", create=False)
    assert server.flask("users", "create", "kate", "--password", PASSWORD).returncode == 0
    return server.start()


def run(coroutine_function):
    """Run ``coroutine_function(client)`` with a fresh v2 REST client, closed afterwards."""
    client_module, _ = kserve_client()

    async def main():
        client = client_module.InferenceRESTClient(client_module.RESTConfig(protocol="v2"))
        try:
            return await coroutine_function(client)
        finally:
            await client.close()

    return asyncio.run(main())


def test_the_kserve_package_is_the_pinned_release():
    from importlib.metadata import version

    assert version("kserve") == "0.21.0"
    client_module, tensors = kserve_client()
    assert hasattr(client_module, "InferenceRESTClient")
    assert hasattr(tensors, "InferRequest")


def test_kserve_client_health_and_model_readiness(server):
    async def calls(client):
        return (
            await client.is_server_live(server.base),
            await client.is_server_ready(server.base),
            await client.is_model_ready(server.base, "forest"),
            await client.is_model_ready(server.base, "no-such-model"),
        )

    assert run(calls) == (True, True, True, False)


@pytest.mark.parametrize("binary_outputs", [True, False])
def test_kserve_client_infers_with_binary_tensors(server, binary_outputs):
    _, tensors = kserve_client()
    headers = server.token("kate", PASSWORD)
    metadata = requests.get(server.url("/v2/models/forest"), headers=headers, timeout=10).json()
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["versions"] == ["1", "2"]

    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    features = tensors.InferInput("X", list(x.shape), "FP32")
    features.set_data_from_numpy(x, binary_data=True)
    request = tensors.InferRequest(
        model_name="forest",
        infer_inputs=[features],
        request_id="kserve-1",
        parameters={"binary_data_output": binary_outputs},
    )
    body, header_length = request.to_rest()
    assert header_length is not None  # the client does send binary data
    seen = {}

    async def infer(client):
        # The client writes its own headers into the dict it is given: a fresh one.
        return await client.infer(
            server.base, request, model_name="forest", headers=dict(headers), response_headers=seen
        )

    response = run(infer)
    expected = forest()[0].predict(x).astype(np.float32).reshape(-1, 1)
    assert response.model_name == "forest"  # the client's response keeps no model_version
    assert response.id == "kserve-1"
    (output,) = response.outputs
    assert output.name == "variable"
    assert output.datatype == "FP32"
    assert output.shape == [3, 1]
    np.testing.assert_allclose(output.as_numpy(), expected, rtol=1e-5)
    # Binary outputs came as raw bytes after the JSON header (the client decoded them).
    assert ("inference-header-content-length" in seen) is binary_outputs
    assert seen["content-type"] == (
        "application/octet-stream" if binary_outputs else "application/json"
    )
