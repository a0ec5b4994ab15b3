"""The prediction cache: keyed by features and model, never leaking one user's envelope."""

from tests.helpers import assert_problem, client_for


def test_second_identical_request_is_a_hit(client, auth):
    """The same features twice: the first is computed, the second served from the cache."""
    first = client.post("/predict-cached", json=[1, 2, 3], headers=auth).get_json()
    second = client.post("/predict-cached", json=[1, 2, 3], headers=auth).get_json()
    assert first == {"prediction": 2.0, "user": "alice", "cached": False}
    assert second == {"prediction": 2.0, "user": "alice", "cached": True}


def test_cached_answer_carries_the_requesting_user(client, auth, make_user, login):
    """A cache hit for bob names bob, not alice who filled the cache (the tutorial leaks)."""
    client.post("/predict-cached", json=[4, 5], headers=auth)
    make_user("bob")
    bob = client.post("/predict-cached", json=[4, 5], headers=login("bob")).get_json()
    assert bob == {"prediction": 4.5, "user": "bob", "cached": True}


def test_different_features_are_different_entries(client, auth):
    """Each feature vector has its own entry."""
    client.post("/predict-cached", json=[1, 2], headers=auth)
    other = client.post("/predict-cached", json=[2, 1.5], headers=auth).get_json()
    assert other["cached"] is False


def test_equal_numbers_share_an_entry(client, auth):
    """1 and 1.0 are the same feature value, so they share a cache entry."""
    client.post("/predict-cached", json=[1, 2], headers=auth)
    assert client.post("/predict-cached", json=[1.0, 2.0], headers=auth).get_json()["cached"]


def test_errors_are_not_cached(client, auth):
    """A rejected body leaves nothing behind: the next valid request is a miss."""
    bad = client.post("/predict-cached", json=[], headers=auth)
    assert bad.status_code == 422
    good = client.post("/predict-cached", json=[3], headers=auth)
    assert good.get_json()["cached"] is False


def test_admin_invalidation_drops_the_entry(client, auth, admin_auth):
    """DELETE /cache/invalidate by an admin makes the next request a miss."""
    client.post("/predict-cached", json=[7, 8], headers=auth)
    response = client.delete("/cache/invalidate", json=[7, 8], headers=admin_auth)
    assert response.get_json() == {"message": "Cache invalidated"}
    assert client.post("/predict-cached", json=[7, 8], headers=auth).get_json()["cached"] is False


def test_invalidation_validates_its_body(client, admin_auth):
    """The invalidation body obeys the same rules as a prediction body."""
    assert client.delete("/cache/invalidate", json=["x"], headers=admin_auth).status_code == 422


def test_cache_key_depends_on_model_version(app):
    """Two versions of one model never share cache entries."""
    from mlapi.serving.cache import cache_key
    from mlapi.serving.models import Model, safe_average

    one = Model("m", "1", "", safe_average)
    two = Model("m", "2", "", safe_average)
    assert cache_key(one, [1.0]) != cache_key(two, [1.0])
    assert cache_key(one, [1.0]) == cache_key(one, [1])


def test_cache_entries_expire(make_app):
    """Entries live CACHE_TIMEOUT seconds."""
    import time

    client, headers = client_for(make_app(CACHE_TIMEOUT=1))
    client.post("/predict-cached", json=[1], headers=headers)
    assert client.post("/predict-cached", json=[1], headers=headers).get_json()["cached"]
    time.sleep(1.2)
    assert client.post("/predict-cached", json=[1], headers=headers).get_json()["cached"] is False


def test_unreachable_redis_invalidation_is_503_and_predictions_still_served(make_app):
    """With Redis down an invalidation cannot be done: 503 with Retry-After, never a 500;
    cached predictions are computed without the cache."""
    from mlapi import users

    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    with app.app_context():
        users.create("root", "root-password-1", role="admin")
    client = app.test_client()
    token = client.post("/token", data={"username": "root", "password": "root-password-1"})
    headers = {"Authorization": f"Bearer {token.get_json()['access_token']}"}
    predicted = client.post("/predict-cached", json=[1, 2], headers=headers)
    assert predicted.status_code == 200 and predicted.get_json()["cached"] is False
    body = assert_problem(client.delete("/cache/invalidate", json=[1, 2], headers=headers), 503)
    assert "cache" in body["detail"]
    response = client.delete("/cache/invalidate", json=[1, 2], headers=headers)
    assert response.headers["Retry-After"] == "2"


def test_cache_key_of_a_list_is_the_key_of_its_float64_array(app):
    """Lists are packed with struct, arrays by numpy: one key for the same features, so
    every worker and instance (and entries written before) agree."""
    import numpy as np

    from mlapi.serving.cache import cache_key

    with app.app_context():
        from mlapi.predictions import registry

        model = registry().get("average")
    rows = [
        [1.0, 2.0, 3.0, 4.0],
        [-0.0, 0.0, 5e-324, -5e-324],
        [1.7976931348623157e308, -1.7976931348623157e308, 2.2250738585072014e-308],
        [1, -7, 2**53 + 1, 2**70],
        [0.1 + 0.2, 1 / 3, -(2**-1074)],
        [],
    ]
    for row in rows:
        assert cache_key(model, row) == cache_key(model, np.array(row, dtype=np.float64))


def test_cached_values_decode_as_json_does():
    """The serializer's float fast path agrees with json.loads on everything stored."""
    import json
    import math

    from mlapi.predictions import JSON_SERIALIZER

    texts = [json.dumps(x) for x in (2.5, -0.0, 1e16, 1e-320, 1.7976931348623157e308, 0.1 + 0.2)]
    texts += [
        "1",
        "-7",
        "1E5",
        "2.5e-3",
        " 2.5",
        "2.5 ",
        "1_0",
        "01.5",
        "NaN",
        "Infinity",
        "[1.0]",
        "x",
    ]
    for text in texts:
        raw = text.encode()
        try:
            expected = json.loads(text)
        except ValueError:
            expected = None
        got = JSON_SERIALIZER.loads(raw)
        assert type(got) is type(expected), text
        assert got == expected or (math.isnan(got) and math.isnan(expected)), text
    assert JSON_SERIALIZER.loads(None) is None
