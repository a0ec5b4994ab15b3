"""Helpers and data that tests share (pytest advises against importing from conftest)."""

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mlapi import users

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("MLAPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "MLAPI_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PASSWORD = "correct-horse-battery"
# A model file's content, as tests write it into MLAPI_MODEL_DIR.
LINEAR = {
    "name": "price",
    "version": "1",
    "kind": "linear",
    "weights": [2.0, -0.5, 0.25],
    "bias": 1.5,
    "feature_names": ["rooms", "age", "area"],
}
PREDICTION_ENDPOINTS = [
    "/predict",
    "/predict-limited",
    "/predict-custom-limit",
    "/predict-cached",
    "/v1/predict",
    "/v2/predict",
    "/v2/predict-monitored",
]


def reachable(url):
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name, url):
    if reachable(url):
        return url
    message = f"{name} is not reachable at {url}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; under CI=true this is a failure, not a skip")
    pytest.skip(message)


def client_for(app, username="alice", password=PASSWORD):
    """A test client of ``app`` and bearer headers for a new user of it."""
    with app.app_context():
        users.create(username, password)
    client = app.test_client()
    token = client.post("/token", data={"username": username, "password": password})
    return client, {"Authorization": f"Bearer {token.get_json()['access_token']}"}


def write_user(app, username, **values):
    """Set columns of a user's row without the rules of mlapi.users (no new token key),
    in the transaction every change of users goes through, which announces it."""
    from mlapi.database import identity_change

    assignments = ", ".join(f"{column} = :{column}" for column in values)
    with app.app_context(), identity_change() as conn:
        conn.execute(
            f"UPDATE users SET {assignments} WHERE username_key = :key",
            {**values, "key": users.username_key(username)},
        )


def assert_problem(response, status):
    """The response is an RFC 9457 problem with this status; returns its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert "type" in body
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def metric(text, name, **labels):
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        if sample.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def promtool():
    path = shutil.which("promtool")
    if path:
        return path
    message = "promtool is not installed (Debian package: prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; under CI=true this is a failure, not a skip")
    pytest.skip(message)


# The migration before users.username_key: databases made by earlier releases.
BEFORE_KEY = "c5b8a0702df1"


def database_before_key(app, names):
    """Take ``app``'s database back to BEFORE_KEY and add users called ``names`` the way
    earlier releases could (no key, any spelling); returns the database URL."""
    from flask_migrate import downgrade

    from mlapi.database import MIGRATIONS, init_migrations
    from mlapi.extensions import db

    with app.app_context():
        init_migrations(app)
        downgrade(directory=MIGRATIONS, revision=BEFORE_KEY)
        with db.transaction() as conn:
            for name in names:
                conn.execute(
                    "INSERT INTO users (username, password_hash, role, disabled, created_at)"
                    " VALUES (:name, 'x', 'user', false, CURRENT_TIMESTAMP)",
                    {"name": name},
                )
    return app.config["DATABASE_URI"]


@functools.cache
def forest(n_features=4, trees=100):
    """A random forest regressor trained on random data, and its ONNX graph as bytes.

    skl2onnx names the input ``X`` (FP32, [-1, n_features]) and the output
    ``variable`` (FP32, [-1, 1]).
    """
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, n_features)).astype(np.float32)
    y = x[:, 0] - 2 * x[:, 1] + rng.normal(size=300) * 0.1
    model = RandomForestRegressor(n_estimators=trees, max_depth=5, random_state=0).fit(x, y)
    return model, to_onnx(model, x[:1], target_opset=17).SerializeToString()


def write_version(root, name, version, filename="model.onnx", content=None, config=None):
    """Write ``root/name/version/filename`` (the forest's graph by default); return its path."""
    import json

    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / name / "config.json").write_text(json.dumps(config))
    path = folder / filename
    if content is None:
        content = forest()[1]
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def tracing_by_worker(server, scrapes=20):
    """{pid: (mlapi_tracing_active, mlapi_opentelemetry_modules)} from scrapes of a real
    server's /metrics, each answered by one worker: until every worker has answered."""
    import requests

    workers = {str(pid) for pid in server.worker_pids()}
    seen = {}
    for _ in range(scrapes):
        text = requests.get(server.url("/metrics"), timeout=10).text
        for pid in re.findall(r'^mlapi_tracing_active\{pid="(\d+)"\}', text, re.M):
            seen[pid] = (
                metric(text, "mlapi_tracing_active", pid=pid),
                metric(text, "mlapi_opentelemetry_modules", pid=pid),
            )
        if workers <= seen.keys():
            break
    return seen


def run_probe(script, *args, env):
    """Run ``script`` with ``args`` in a fresh interpreter at the repository's root, with
    only ``env``; the JSON of each line it prints as ``PROBE <json>``."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    return [json.loads(line.removeprefix("PROBE ")) for line in lines if line.startswith("PROBE ")]
