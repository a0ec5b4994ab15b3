"""Every endpoint of the tutorial answers with the tutorial's shapes."""

import pytest

from tests.helpers import PREDICTION_ENDPOINTS


def test_index_lists_versions(client):
    """GET / names the service, both versions and their prediction endpoints."""
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_json() == {
        "service": "mlapi",
        "versions": ["v1", "v2"],
        "endpoints": {"v1": "/v1/predict", "v2": "/v2/predict"},
    }


def test_predict_returns_mean_and_user(client, auth):
    """POST /predict answers the mean of the features and the caller's name."""
    response = client.post("/predict", json=[1, 2, 3, 4.5], headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"prediction": 2.625, "user": "alice"}


def test_predict_limited_returns_only_the_prediction(client, auth):
    """POST /predict-limited answers {"prediction"} alone."""
    response = client.post("/predict-limited", json=[2, 4], headers=auth)
    assert response.get_json() == {"prediction": 3.0}


def test_predict_custom_limit_reports_remaining(client, auth):
    """POST /predict-custom-limit counts down rate_limit_remaining per request."""
    first = client.post("/predict-custom-limit", json=[1, 3], headers=auth).get_json()
    second = client.post("/predict-custom-limit", json=[1, 3], headers=auth).get_json()
    assert first == {"prediction": 2.0, "rate_limit_remaining": 99}
    assert second["rate_limit_remaining"] == 98


def test_v1_is_the_average(client, auth):
    """POST /v1/predict answers version 1.0, the mean, method average."""
    response = client.post("/v1/predict", json=[1, 2, 3, 4], headers=auth)
    assert response.get_json() == {"version": "1.0", "prediction": 2.5, "method": "average"}


@pytest.mark.parametrize(
    ("features", "weights"),
    [
        ([1, 2, 3, 4], [1.0, 1.5, 2.0, 0.5]),
        ([10, 20], [1.0, 1.5]),
        ([7], [1.0]),
    ],
)
def test_v2_is_the_weighted_average(client, auth, features, weights):
    """POST /v2/predict weights the features by the first len(features) weights."""
    response = client.post("/v2/predict", json=features, headers=auth)
    expected = sum(f * w for f, w in zip(features, weights, strict=True)) / sum(weights)
    body = response.get_json()
    assert response.status_code == 200
    assert body["version"] == "2.0"
    assert body["method"] == "weighted_average"
    assert body["weights"] == weights
    assert body["prediction"] == pytest.approx(expected, rel=1e-15)


def test_v2_with_more_than_four_features_is_a_422_that_says_so(client, auth):
    """The tutorial crashes on a fifth feature; mlapi answers 422 naming the bound."""
    response = client.post("/v2/predict", json=[1, 2, 3, 4, 5], headers=auth)
    assert response.status_code == 422
    assert "at most 4 features" in response.get_json()["detail"]


def test_v2_predict_monitored_returns_the_mean(client, auth):
    """POST /v2/predict-monitored answers the plain mean."""
    response = client.post("/v2/predict-monitored", json=[1, 2, 6], headers=auth)
    assert response.get_json() == {"prediction": 3.0}


def test_public_needs_no_token(client):
    """GET /public answers a message without authentication."""
    response = client.get("/public")
    assert response.status_code == 200
    assert "rate limited" in response.get_json()["message"]


@pytest.mark.parametrize("path", PREDICTION_ENDPOINTS)
def test_prediction_endpoints_need_a_token(client, path):
    """Every prediction endpoint refuses an anonymous request with a Bearer challenge."""
    response = client.post(path, json=[1, 2])
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["detail"]


def test_huge_finite_values_do_not_overflow(client, auth):
    """A mean of values near the float maximum stays finite (a naive sum overflows)."""
    response = client.post("/v1/predict", json=[1.7e308, 1.7e308, 1.7e308], headers=auth)
    assert response.status_code == 200
    assert response.get_json()["prediction"] == pytest.approx(1.7e308)
    weighted = client.post("/v2/predict", json=[1.7e308, -1.7e308, 1.7e308], headers=auth)
    assert weighted.status_code == 200
    assert weighted.get_json()["prediction"] == pytest.approx(1.7e308 * (1.5 / 4.5))


def test_every_response_has_request_id_and_process_time(client):
    """X-Request-ID and X-Process-Time are on successes and errors alike."""
    for response in (client.get("/"), client.get("/no-such-page")):
        assert len(response.headers["X-Request-ID"]) >= 16
        assert float(response.headers["X-Process-Time"]) >= 0


def test_well_formed_request_id_is_echoed(client):
    """A client's X-Request-ID is echoed back; a malformed one is replaced."""
    assert client.get("/", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    replaced = client.get("/", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["X-Request-ID"] != "bad id\twith spaces"


def test_the_app_keeps_each_functions_sync_check_as_flask_makes_it(make_app):
    """mlapi.App caches ensure_sync per function; the answer is Flask's own."""
    from flask import Flask

    app = make_app()

    def view():
        return "ok"

    async def coroutine_view():
        return "ok"

    assert app.ensure_sync(view) is view is Flask.ensure_sync(app, view)
    assert app.ensure_sync(view) is view
    try:
        expected = Flask.ensure_sync(app, coroutine_view)
    except RuntimeError as exc:  # Flask without its async extra refuses coroutines
        with pytest.raises(RuntimeError, match=str(exc)[:40]):
            app.ensure_sync(coroutine_view)
    else:
        assert app.ensure_sync(coroutine_view) is not coroutine_view
        assert type(app.ensure_sync(coroutine_view)) is type(expected)
