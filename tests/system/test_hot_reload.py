"""Hot reload under load: real gunicorn workers poll the repository and swap snapshots."""

import concurrent.futures
import os
import threading
import time
import uuid

import numpy as np
import pytest
import requests

from tests.helpers import write_version
from tests.system.servers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PASSWORD = "hot-reload-pass-1"
X = np.zeros((2, 4), dtype=np.float32)
BODY = {"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}]}


@pytest.fixture
def server(servers, redis_url, tmp_path):
    """Two workers (shared Redis), a repository with forest/1, polled every 0.3 s."""
    repository = tmp_path / "repository"
    write_version(repository, "forest", 1)
    env = {
        "MLAPI_REDIS_URL": redis_url,
        "MLAPI_REDIS_KEY_PREFIX": f"mlapi-test-{uuid.uuid4().hex[:8]}:",
        "MLAPI_MODEL_DIR": str(repository),
        "MLAPI_MODEL_POLL_SECONDS": "0.3",
        "MLAPI_PREDICT_RATE_LIMIT": "100000/minute",
        "WEB_CONCURRENCY": "2",
    }
    server = servers(env=env, name="reload", create=False)
    assert server.flask("users", "create", "alice", "--password", PASSWORD).returncode == 0
    assert (
        server.flask("users", "create", "root", "--admin", "--password", PASSWORD).returncode == 0
    )
    server.start()
    assert len(server.worker_pids()) == 2
    server.repository = repository
    return server


def load_loop(server, headers, stop, results):
    """Infer until ``stop`` is set, each call on a new connection; record every outcome."""
    while not stop.is_set():
        try:
            response = requests.post(
                server.url("/v2/models/forest/infer"), json=BODY, headers=headers, timeout=10
            )
            version = response.json().get("model_version") if response.ok else None
            results.append((response.status_code, version))
        except requests.RequestException as exc:
            results.append((type(exc).__name__, None))


def versions_served(server, headers, calls=40):
    """The model versions answered by ``calls`` requests, each on a new connection."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = pool.map(
            lambda _: requests.post(
                server.url("/v2/models/forest/infer"), json=BODY, headers=headers, timeout=10
            ),
            range(calls),
        )
        return {response.json().get("model_version") for response in responses}


def test_a_new_version_is_served_by_every_worker_without_a_failed_request(server):
    headers = server.token("alice", PASSWORD)
    assert versions_served(server, headers) == {"1"}
    stop, results = threading.Event(), []
    threads = [
        threading.Thread(target=load_loop, args=(server, headers, stop, results)) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        # Copied in under a hidden name, then renamed: never seen half-written.
        write_version(server.repository, "forest", ".2")
        os.rename(server.repository / "forest" / ".2", server.repository / "forest" / "2")
        wait_until(
            lambda: any(version == "2" for _, version in results[-20:]),
            timeout=15,
            what="version 2 to be served",
        )
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    statuses = {status for status, _ in results}
    assert statuses == {200}, [r for r in results if r[0] != 200][:5]
    assert len(results) > 20
    # Every worker loaded it (each logs the swap once) and answers with it.
    loaded = [line for line in server.log_lines() if line.get("message") == "model forest:2 loaded"]
    assert len(loaded) == 2, loaded
    assert versions_served(server, headers) == {"2"}
    # The statistics extension sums both workers' counters: every call answered by
    # version 2 (the load loop's and the 40 above) was counted once, with its 2 rows.
    served_by_2 = sum(1 for _, version in results if version == "2") + 40
    stats = requests.get(
        server.url("/v2/models/forest/versions/2/stats"), headers=headers, timeout=10
    )
    [entry] = stats.json()["model_stats"]
    assert entry["execution_count"] == served_by_2
    assert entry["inference_count"] == 2 * served_by_2


def test_unload_through_one_worker_reaches_every_worker(server):
    headers = server.token("alice", PASSWORD)
    admin = server.token("root", PASSWORD)
    response = requests.post(
        server.url("/v2/repository/models/forest/unload"), headers=admin, timeout=10
    )
    assert response.status_code == 200, response.text

    def everywhere_unready():
        codes = {
            requests.get(server.url("/v2/models/forest/ready"), timeout=5).status_code
            for _ in range(20)
        }
        return codes == {503}

    wait_until(everywhere_unready, timeout=10, what="every worker to unload forest")
    response = requests.post(
        server.url("/v2/repository/models/forest/load"), headers=admin, timeout=10
    )
    assert response.status_code == 200
    wait_until(
        lambda: versions_served(server, headers, calls=20) == {"1"},
        timeout=10,
        what="every worker to load forest again",
    )


def test_unload_on_one_host_reaches_another_sharing_redis(servers, redis_url, tmp_path):
    """Two instances as on two hosts: own instance folders, databases and repositories,
    one Redis. An admin's unload and load on the first reach the second's workers within
    a poll interval (they read the control state from Redis, not from a shared folder)."""
    prefix = f"mlapi-test-{uuid.uuid4().hex[:8]}:"
    hosts = []
    for host in ("a", "b"):
        repository = tmp_path / f"repository-{host}"
        write_version(repository, "forest", 1)
        env = {
            "MLAPI_REDIS_URL": redis_url,
            "MLAPI_REDIS_KEY_PREFIX": prefix,
            "MLAPI_INSTANCE_PATH": str(tmp_path / f"instance-{host}"),
            "MLAPI_MODEL_DIR": str(repository),
            "MLAPI_MODEL_POLL_SECONDS": "0.3",
            "WEB_CONCURRENCY": "2",
        }
        server = servers(env=env, name=f"host-{host}", create=False)
        assert (
            server.flask("users", "create", "root", "--admin", "--password", PASSWORD).returncode
            == 0
        )
        hosts.append(server.start())
    a, b = hosts
    assert (tmp_path / "instance-a").is_dir() and (tmp_path / "instance-b").is_dir()
    admin = a.token("root", PASSWORD)

    def readiness(server):
        """The forest's readiness as answered by 20 requests, each on a new connection."""
        return {
            requests.get(server.url("/v2/models/forest/ready"), timeout=5).status_code
            for _ in range(20)
        }

    assert readiness(b) == {200}
    response = requests.post(
        a.url("/v2/repository/models/forest/unload"), headers=admin, timeout=10
    )
    assert response.status_code == 200, response.text
    wait_until(lambda: readiness(b) == {503}, timeout=10, what="host b's workers to unload")
    assert readiness(a) == {503}
    assert not (tmp_path / "instance-b" / "model-control.json").exists()

    response = requests.post(a.url("/v2/repository/models/forest/load"), headers=admin, timeout=10)
    assert response.status_code == 200, response.text
    wait_until(lambda: readiness(b) == {200}, timeout=10, what="host b's workers to load again")
    unloaded = [line for line in b.log_lines() if line.get("message") == "model forest:1 unloaded"]
    assert len(unloaded) == 2, unloaded  # each of b's workers applied it once
