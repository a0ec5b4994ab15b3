"""Prometheus conventions in one process: build info, 405 labels, model latency buckets."""

import platform

import pytest

from mlapi import __version__
from mlapi.observability import metrics
from tests.helpers import metric


def scrape(client):
    return client.get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [("get", "/v1/predict", "/v1/predict"), ("delete", "/token", "/token")],
)
def test_a_405_is_labelled_with_the_route_it_matched(client, method, path, route):
    """(Counters are process-wide, shared by every test: compare before and after.)"""
    before = scrape(client)
    assert getattr(client, method)(path).status_code == 405
    after = scrape(client)
    for endpoint, change in ((route, 1), ("<unmatched>", 0)):
        counted = [metric(text, "api_requests_total", endpoint=endpoint, status="405")
                   for text in (before, after)]  # fmt: skip
        assert counted[1] - counted[0] == change


def test_an_unknown_path_stays_unmatched(client):
    before = metric(scrape(client), "api_requests_total", endpoint="<unmatched>", status="404")
    assert client.get("/no/such/thing").status_code == 404
    after = metric(scrape(client), "api_requests_total", endpoint="<unmatched>", status="404")
    assert after - before == 1


def test_build_info_is_exposed(client):
    text = scrape(client)
    labels = metrics.build_labels()
    assert labels["version"] == __version__
    assert labels["python"] == platform.python_version()
    assert metric(text, "mlapi_build_info", version=__version__, commit=labels["commit"]) == 1


def test_the_build_commit_comes_from_the_environment_first(monkeypatch):
    monkeypatch.setenv("MLAPI_BUILD_COMMIT", "feedface")
    assert metrics.build_commit() == "feedface"


def test_the_build_commit_never_fails_without_git(monkeypatch):
    monkeypatch.delenv("MLAPI_BUILD_COMMIT", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert metrics.build_commit() == "unknown"


def test_model_latency_buckets_start_at_ten_microseconds():
    assert metrics.MODEL_LATENCY_BUCKETS[0] == 0.00001
    assert 1 in metrics.MODEL_LATENCY_BUCKETS
    assert list(metrics.MODEL_LATENCY_BUCKETS) == sorted(metrics.MODEL_LATENCY_BUCKETS)


def test_the_process_collector_reports_this_process_outside_gunicorn():
    import os

    collected = {family.name: family for family in metrics.WorkerProcessCollector(None).collect()}
    (sample,) = collected["process_resident_memory_bytes"].samples
    assert sample.labels == {"pid": str(os.getpid()), "role": "worker"}
    assert sample.value > 0
