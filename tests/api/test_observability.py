"""Metrics that add up across workers, structured access logs, and honest probes."""

import subprocess

from tests.helpers import client_for, metric, promtool

PASSWORD = "observe-pass-12"


# --- in-process ---------------------------------------------------------------------


def scrape(client):
    return client.get("/metrics").get_data(as_text=True)


def test_metrics_use_route_templates_not_raw_paths(client, auth):
    """Labels carry route templates; a scanner's random paths collapse into <unmatched>."""
    before = scrape(client)
    for n in range(5):
        client.get(f"/random-scan-{n}")
    client.post("/v1/predict", json=[1], headers=auth)
    after = scrape(client)
    assert "random-scan" not in after
    unmatched = {"endpoint": "<unmatched>", "status": "404"}
    assert (
        metric(after, "api_requests_total", **unmatched)
        - metric(before, "api_requests_total", **unmatched)
        == 5
    )
    v1 = {"endpoint": "/v1/predict", "method": "POST", "status": "200"}
    assert (
        metric(after, "api_requests_total", **v1) - metric(before, "api_requests_total", **v1) == 1
    )


def test_tutorial_metrics_are_exposed(client, auth, admin_auth):
    """The tutorial's metric names exist with their meaning, plus the operator's extras."""
    before = scrape(client)
    client.post("/v2/predict-monitored", json=[1, 2], headers=auth)
    client.post("/predict-cached", json=[9, 8, 7], headers=auth)
    client.post("/predict-cached", json=[9, 8, 7], headers=auth)
    client.get("/users/me", headers={"Authorization": "Bearer nope"})
    client.get("/users/me", headers=admin_auth)
    client.get("/health/ready")
    after = scrape(client)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("predictions_total", version="v2", model="average") == 1
    assert grew("predictions_total", version="unversioned", model="average") == 2
    assert grew("cache_hits_total") == 1 and grew("cache_misses_total") == 1
    assert grew("auth_failures_total", reason="invalid_token") == 1
    assert grew("model_inference_seconds_count", model="average", model_version="1.0") == 2
    assert metric(after, "active_users") == 2
    assert metric(after, "readiness_check_ok", check="database") == 1
    assert "api_request_duration_seconds_bucket" in after
    assert "api_requests_in_flight" in after


def test_rate_limit_rejections_are_counted(client):
    """Each 429 increments rate_limit_rejections_total for its route."""
    before = metric(scrape(client), "rate_limit_rejections_total", endpoint="/public")
    for _ in range(7):
        client.get("/public")
    after = metric(scrape(client), "rate_limit_rejections_total", endpoint="/public")
    assert after - before == 2


def test_per_user_series_are_off_by_default(client, auth):
    """predictions_total has an empty user label unless METRICS_PER_USER is on."""
    client.post("/predict", json=[1], headers=auth)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'user="alice"' not in text


def test_per_user_series_when_enabled(make_app):
    """With METRICS_PER_USER, predictions_total is split by user."""
    client, headers = client_for(make_app(METRICS_PER_USER=True), "carol")
    client.post("/predict", json=[1], headers=headers)
    assert 'user="carol"' in client.get("/metrics").get_data(as_text=True)


def test_metrics_pass_promtool(client, auth):
    """promtool check metrics accepts the exposition."""
    client.post("/v1/predict", json=[1], headers=auth)
    text = client.get("/metrics").get_data(as_text=True)
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_request_id_appears_in_every_log_line_of_the_request(client, auth, caplog):
    """App log lines emitted during a request carry its request id, method and route."""
    import logging

    caplog.set_level(logging.WARNING)
    client.post(
        "/token",
        data={"username": "x", "password": "wrong-password"},
        headers={"X-Request-ID": "trace-me-1"},
    )
    app_lines = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-me-1"]
    assert all(r.route == "/token" and r.method == "POST" for r in app_lines)
