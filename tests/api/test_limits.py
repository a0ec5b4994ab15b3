"""Rate limits: documented amounts, headers on every limited response, problem 429s."""

import pytest

from tests.helpers import PASSWORD, assert_problem, client_for


def test_public_allows_five_per_minute_per_address(client):
    """GET /public: 5 requests pass, the 6th is a 429 problem with Retry-After."""
    statuses = [client.get("/public").status_code for _ in range(5)]
    assert statuses == [200] * 5
    blocked = client.get("/public")
    body = assert_problem(blocked, 429)
    assert "5 per 1 minute" in body["detail"]
    assert 0 < int(blocked.headers["Retry-After"]) <= 60
    assert blocked.headers["Cache-Control"] == "no-store"


def test_public_limit_is_per_address(client):
    """Another client address has its own budget."""
    for _ in range(5):
        client.get("/public")
    assert client.get("/public").status_code == 429
    assert client.get("/public", environ_base={"REMOTE_ADDR": "10.1.1.1"}).status_code == 200


def test_forwarded_for_is_ignored_by_default(client):
    """A spoofed X-Forwarded-For cannot reset the per-address limit."""
    for n in range(5):
        client.get("/public", headers={"X-Forwarded-For": f"192.0.2.{n}"})
    spoofed = client.get("/public", headers={"X-Forwarded-For": "198.51.100.7"})
    assert spoofed.status_code == 429


def test_trusted_proxy_hops_use_the_forwarded_address(make_app):
    """With TRUSTED_PROXIES=1, the address the proxy forwards is the one limited."""
    client = make_app(TRUSTED_PROXIES=1).test_client()
    for _ in range(5):
        assert client.get("/public", headers={"X-Forwarded-For": "192.0.2.1"}).status_code == 200
    assert client.get("/public", headers={"X-Forwarded-For": "192.0.2.1"}).status_code == 429
    assert client.get("/public", headers={"X-Forwarded-For": "192.0.2.2"}).status_code == 200


def test_limited_response_headers(client):
    """Limited responses carry X-RateLimit-* and the IETF draft headers; no Retry-After on 200."""
    response = client.get("/public")
    headers = response.headers
    assert headers["X-RateLimit-Limit"] == "5"
    assert headers["X-RateLimit-Remaining"] == "4"
    assert int(headers["X-RateLimit-Reset"]) > 0
    assert headers["RateLimit-Policy"] == '"default";q=5;w=60'
    assert headers["RateLimit"].startswith('"default";r=4;t=')
    assert "Retry-After" not in headers


def test_predict_limited_is_ten_per_minute(client, auth):
    """POST /predict-limited allows 10 per minute per address."""
    statuses = [
        client.post("/predict-limited", json=[1], headers=auth).status_code for _ in range(11)
    ]
    assert statuses == [200] * 10 + [429]


def test_custom_limit_is_per_user(make_app):
    """POST /predict-custom-limit counts per user: alice's budget is not bob's."""
    from mlapi import users

    app = make_app(CUSTOM_RATE_LIMIT="3/minute")
    client = app.test_client()
    headers = {}
    with app.app_context():
        for name in ("alice", "bob"):
            users.create(name, PASSWORD)
    for name in ("alice", "bob"):
        token = client.post("/token", data={"username": name, "password": PASSWORD}).get_json()
        headers[name] = {"Authorization": f"Bearer {token['access_token']}"}
    remaining = [
        client.post("/predict-custom-limit", json=[1], headers=headers["alice"]).get_json()
        for _ in range(3)
    ]
    assert [r["rate_limit_remaining"] for r in remaining] == [2, 1, 0]
    assert (
        client.post("/predict-custom-limit", json=[1], headers=headers["alice"]).status_code == 429
    )
    bob = client.post("/predict-custom-limit", json=[1], headers=headers["bob"])
    assert bob.get_json()["rate_limit_remaining"] == 2


def test_predictions_share_one_per_user_budget(make_app):
    """PREDICT_RATE_LIMIT is one budget per user across every prediction endpoint."""
    client, headers = client_for(make_app(PREDICT_RATE_LIMIT="4/minute"))
    paths = ["/predict", "/v1/predict", "/v2/predict", "/predict-cached"]
    assert [client.post(p, json=[1], headers=headers).status_code for p in paths] == [200] * 4
    body = assert_problem(client.post("/v2/predict-monitored", json=[1], headers=headers), 429)
    assert "4 per 1 minute" in body["detail"]


def test_unauthenticated_requests_do_not_spend_a_budget(client, auth):
    """A 401 never counts against the address limit of /predict-limited."""
    for _ in range(12):
        assert client.post("/predict-limited", json=[1]).status_code == 401
    assert client.post("/predict-limited", json=[1], headers=auth).status_code == 200


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/health/metrics", "/metrics"])
def test_probes_and_metrics_are_never_limited(client, path):
    """Health and metrics endpoints answer every poll and carry no limit headers."""
    statuses = {client.get(path).status_code for _ in range(30)}
    assert statuses == {200}
    assert "X-RateLimit-Limit" not in client.get(path).headers


def test_bad_limit_configuration_refuses_to_start(make_app):
    """A limit string flask-limiter cannot parse stops the app at start, naming the variable."""
    with pytest.raises(ValueError, match="MLAPI_PUBLIC_RATE_LIMIT"):
        make_app(PUBLIC_RATE_LIMIT="10 per fortnight")


def test_every_limit_is_configurable(make_app):
    """PUBLIC_RATE_LIMIT changes /public's budget."""
    client = make_app(PUBLIC_RATE_LIMIT="2/minute").test_client()
    assert [client.get("/public").status_code for _ in range(3)] == [200, 200, 429]
