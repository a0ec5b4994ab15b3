"""/predict-cached?model=<name>: any loaded model's prediction through the cache."""

import json

import pytest

from tests.helpers import LINEAR, assert_problem, client_for

FEATURES = [3.0, 10.0, 80.0]  # 2*3 - 0.5*10 + 0.25*80 + 1.5 = 22.5


@pytest.fixture(params=["embedded", "redis"])
def client_and_auth(request, make_app, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "price.json").write_text(json.dumps(LINEAR))
    settings = {"MODEL_DIR": str(folder)}
    if request.param == "redis":
        settings["REDIS_URL"] = request.getfixturevalue("redis_url")
    return client_for(make_app(**settings))


def test_a_named_model_is_computed_then_served_from_the_cache(client_and_auth):
    client, auth = client_and_auth
    first = client.post("/predict-cached?model=price", json=FEATURES, headers=auth).get_json()
    second = client.post("/predict-cached?model=price", json=FEATURES, headers=auth).get_json()
    assert first == {"prediction": 22.5, "user": "alice", "cached": False}
    assert second == {"prediction": 22.5, "user": "alice", "cached": True}
    # Another model on the same features is its own entry.
    average = client.post("/predict-cached", json=FEATURES, headers=auth).get_json()
    assert average == {"prediction": 31.0, "user": "alice", "cached": False}


def test_an_unknown_model_is_a_404_after_the_limit(client_and_auth):
    client, auth = client_and_auth
    response = client.post("/predict-cached?model=nope", json=FEATURES, headers=auth)
    assert_problem(response, 404)
    assert response.headers["X-RateLimit-Remaining"]
