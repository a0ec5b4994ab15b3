"""End to end through gunicorn, the way operators run mlapi and clients call it."""

import concurrent.futures

import pytest
import requests

pytestmark = pytest.mark.slow

PASSWORD = "tutorial-pass-123"


@pytest.fixture
def server(servers):
    server = servers(create=False)
    created = server.flask(
        "users", "create", "testuser", "--password", PASSWORD, "--email", "t@x.io"
    )
    assert created.returncode == 0, created.stderr
    admin = server.flask("users", "create", "admin", "--admin", "--password", PASSWORD)
    assert admin.returncode == 0, admin.stderr
    return server.start()


def test_tutorial_client_flow_works_unchanged(server):
    """Form login, bearer header, JSON array bodies, and `detail` on errors, over real HTTP."""
    login = requests.post(
        server.url("/token"), data={"username": "testuser", "password": PASSWORD}, timeout=10
    )
    assert login.status_code == 200
    token = login.json()["access_token"]
    assert login.json()["token_type"] == "bearer"
    headers = {"Authorization": f"Bearer {token}"}

    assert requests.get(server.url("/users/me"), headers=headers, timeout=10).json() == {
        "username": "testuser",
        "email": "t@x.io",
        "disabled": False,
    }
    predict = requests.post(
        server.url("/predict"), json=[1.0, 2.0, 3.0], headers=headers, timeout=10
    )
    assert predict.json() == {"prediction": 2.0, "user": "testuser"}
    v1 = requests.post(server.url("/v1/predict"), json=[1, 2, 3, 4], headers=headers, timeout=10)
    assert v1.json() == {"version": "1.0", "prediction": 2.5, "method": "average"}
    v2 = requests.post(server.url("/v2/predict"), json=[1, 2, 3, 4], headers=headers, timeout=10)
    assert v2.json()["weights"] == [1.0, 1.5, 2.0, 0.5]
    cached = [
        requests.post(
            server.url("/predict-cached"), json=[5, 6], headers=headers, timeout=10
        ).json()
        for _ in range(2)
    ]
    assert [c["cached"] for c in cached] == [False, True]
    bad = requests.post(
        server.url("/token"), data={"username": "testuser", "password": "nope-nope"}, timeout=10
    )
    assert bad.status_code == 401
    assert bad.json()["detail"] == "Incorrect username or password"
    empty = requests.post(server.url("/predict"), json=[], headers=headers, timeout=10)
    assert empty.status_code == 422 and "at least 1" in empty.json()["detail"]


def test_every_documented_endpoint_answers(server):
    """Each row of the endpoint table answers through gunicorn with its documented status."""
    user = server.token("testuser", PASSWORD)
    admin = server.token("admin", PASSWORD)
    body = [1.0, 2.0]
    cases = [
        ("GET", "/", None, None, 200),
        ("GET", "/public", None, None, 200),
        ("GET", "/users/me", user, None, 200),
        ("POST", "/predict", user, body, 200),
        ("POST", "/predict-limited", user, body, 200),
        ("POST", "/predict-custom-limit", user, body, 200),
        ("POST", "/predict-cached", user, body, 200),
        ("DELETE", "/cache/invalidate", admin, body, 200),
        ("DELETE", "/cache/invalidate", user, body, 403),
        ("POST", "/v1/predict", user, body, 200),
        ("POST", "/v2/predict", user, body, 200),
        ("POST", "/v2/predict-monitored", user, body, 200),
        ("GET", "/metrics", None, None, 200),
        ("GET", "/health/live", None, None, 200),
        ("GET", "/health/ready", None, None, 200),
        ("GET", "/health/metrics", None, None, 200),
        ("GET", "/openapi.json", None, None, 200),
    ]
    for method, path, headers, json_body, status in cases:
        response = requests.request(
            method, server.url(path), headers=headers, json=json_body, timeout=10
        )
        assert response.status_code == status, (method, path, response.text)
        assert response.headers["X-Request-ID"]
        assert float(response.headers["X-Process-Time"]) >= 0


def test_embedded_mode_runs_one_worker_and_says_why(servers):
    """Without Redis, WEB_CONCURRENCY=4 is corrected to one worker, with a log line saying so."""
    server = servers(env={"WEB_CONCURRENCY": "4"})
    assert len(server.worker_pids()) == 1
    messages = [line.get("message", "") for line in server.log_lines()]
    assert any("WEB_CONCURRENCY=4 ignored" in message for message in messages)


def test_embedded_limits_are_exact_under_concurrency(server):
    """30 concurrent requests to the 10-per-minute endpoint give exactly 10 successes."""
    headers = server.token("testuser", PASSWORD)

    def call(_):
        return requests.post(
            server.url("/predict-limited"), json=[1], headers=headers, timeout=10
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(call, range(30)))
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20


def test_logs_are_json_lines_without_secrets(server):
    """Every log line is one JSON object; no password or token ever appears."""
    headers = server.token("testuser", PASSWORD)
    requests.post(server.url("/predict"), json=[1], headers=headers, timeout=10)
    requests.get(
        server.url("/users/me"), headers={"Authorization": "Bearer forged.token.x"}, timeout=10
    )
    text = server.log_path.read_text()
    lines = server.log_lines()
    raw = [line for line in lines if "text" in line]
    assert lines and not raw, raw[:3]
    token = headers["Authorization"].split()[1]
    assert PASSWORD not in text and token not in text and "forged.token.x" not in text
