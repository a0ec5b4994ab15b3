"""Strict input: every class of bad body gets the right 4xx problem, never a 500."""

import pytest

from tests.helpers import PREDICTION_ENDPOINTS, assert_problem, client_for

BAD_JSON_BODIES = {
    "empty array": ("[]", "at least 1 item"),
    "object": ('{"features": [1, 2]}', "valid list"),
    "number": ("3", "valid list"),
    "null": ("null", "valid list"),
    "null item": ("[1, null]", "valid number"),
    "boolean item": ("[true, 1]", "valid number"),
    "numeric string": ('["1.5"]', "valid number"),
    "nested array": ("[[1, 2]]", "valid number"),
    "NaN": ("[NaN]", "finite number"),
    "Infinity": ("[1, Infinity]", "finite number"),
    "-Infinity": ("[-Infinity]", "finite number"),
    "overflow to infinity": ("[1e400]", "finite number"),
}


@pytest.mark.parametrize("path", PREDICTION_ENDPOINTS)
@pytest.mark.parametrize("case", sorted(BAD_JSON_BODIES))
def test_invalid_features_are_422_with_a_pointer(client, auth, path, case):
    """Each bad body is a 422 validation problem whose detail names what is wrong."""
    raw, message = BAD_JSON_BODIES[case]
    response = client.post(path, data=raw, headers={**auth, "Content-Type": "application/json"})
    body = assert_problem(response, 422)
    assert body["type"] == "/problems/validation-error"
    assert message in body["detail"]
    assert body["errors"] and all("pointer" in e and "detail" in e for e in body["errors"])


def test_errors_point_at_each_bad_item(client, auth):
    """The errors list has one JSON Pointer per bad item and never echoes the input."""
    response = client.post(
        "/predict", data='[1, "x", 3, null]', headers={**auth, "Content-Type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert [e["pointer"] for e in body["errors"]] == ["/1", "/3"]
    assert "(and 1 more)" in body["detail"]
    assert all("input" not in e for e in body["errors"])


@pytest.mark.parametrize("raw", ["[1, 2", "{", "[1,,2]", "nope", ""])
def test_malformed_json_is_400(client, auth, raw):
    """A body that is not JSON is a 400 problem."""
    response = client.post(
        "/predict", data=raw, headers={**auth, "Content-Type": "application/json"}
    )
    body = assert_problem(response, 400)
    assert "not valid JSON" in body["detail"]


def test_pathologically_deep_nesting_is_400_not_500(client, auth):
    """100,000 nested brackets are a 400, not a RecursionError 500."""
    raw = "[" * 100_000 + "]" * 100_000
    response = client.post(
        "/predict", data=raw, headers={**auth, "Content-Type": "application/json"}
    )
    body = assert_problem(response, 400)
    assert "too deep" in body["detail"]


def test_body_over_max_content_length_is_413(client, auth):
    """A body over MAX_CONTENT_LENGTH (1 MiB) is a 413 problem."""
    raw = "[" + ",".join(["1.0"] * 300_000) + "]"
    assert len(raw) > 1024 * 1024
    response = client.post(
        "/predict", data=raw, headers={**auth, "Content-Type": "application/json"}
    )
    assert_problem(response, 413)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_is_415(client, auth, content_type):
    """A body sent with another content type is a 415 problem."""
    headers = dict(auth)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/predict", data="[1, 2]", headers=headers)
    body = assert_problem(response, 415)
    assert "application/json" in body["detail"]


def test_too_many_features_is_422(make_app):
    """More than MAX_FEATURES features is a 422 naming the bound."""
    client, headers = client_for(make_app(MAX_FEATURES=3))
    assert client.post("/predict", json=[1, 2, 3], headers=headers).status_code == 200
    body = assert_problem(client.post("/predict", json=[1, 2, 3, 4], headers=headers), 422)
    assert "at most 3" in body["detail"]


def test_ten_thousand_features_are_accepted(client, auth):
    """The default bound admits 10,000 features."""
    response = client.post("/predict", json=[2.0] * 10_000, headers=auth)
    assert response.status_code == 200
    assert response.get_json()["prediction"] == 2.0


def test_responses_are_strict_json(client, auth):
    """No response body contains NaN or Infinity tokens."""
    response = client.post("/predict", json=[1e308, 1e308, -1e308, 1e308], headers=auth)
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.parametrize("padding", [0, 2 * 1024 * 1024])
def test_chunked_body_over_the_limit_is_413_not_truncated(client, auth, padding):
    """A chunked body (no Content-Length) over 1 MiB is a 413; under it, it is read whole."""
    import io

    body = b"[1, 2]" + b" " * padding
    response = client.post(
        "/predict",
        input_stream=io.BytesIO(body),
        headers={**auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    if padding:
        assert_problem(response, 413)
    else:
        assert response.get_json()["prediction"] == 1.5


@pytest.mark.parametrize("declared", [17, 18, 2 * 1024 * 1024])
def test_a_body_is_read_by_its_content_length_with_werkzeugs_rules(client, auth, declared):
    """A Content-Length body is read in one call: over the limit is a 413 before reading,
    fewer bytes than announced a 400, as werkzeug's own stream answers them."""
    import io

    body = b"[1.0,2.0,3.0,4.0]"  # 17 bytes
    response = client.post(
        "/v1/predict",
        input_stream=io.BytesIO(body),
        headers={**auth, "Content-Type": "application/json"},
        environ_overrides={"CONTENT_LENGTH": str(declared)},
    )
    if declared == len(body):
        assert response.get_json()["prediction"] == 2.5
    else:
        assert_problem(response, 413 if declared > len(body) + 1 else 400)


def test_after_the_body_is_read_the_stream_is_spent_and_data_kept(app):
    """As werkzeug leaves them: ``stream`` reads nothing more, ``data`` is the body."""
    with app.test_request_context(
        "/", method="POST", data=b"[1, 2]", content_type="application/json"
    ):
        from flask import request

        assert request.get_data() == b"[1, 2]"
        assert request.stream.read() == b""
        assert request.data == b"[1, 2]"
        assert request.get_json() == [1, 2]


def test_a_requests_own_body_limit_wins_over_the_apps(app):
    """Flask lets a view lower the limit for its request; the one-call read keeps it."""
    from werkzeug.exceptions import RequestEntityTooLarge

    with app.test_request_context(
        "/", method="POST", data=b"[1, 2, 3]", content_type="application/json"
    ):
        from flask import request

        request.max_content_length = 5
        with pytest.raises(RequestEntityTooLarge):
            request.get_data()


# Bodies at the edges of the rules; the fast path (bodies.bare_row) may accept only what the
# general path accepts, with the same values.
EDGE_BODIES = [
    b"[1.0,2.0,3.0,4.0]",
    b"[1,2,3]",
    b"[-0.0, 1e308, -1e-308, 5e-324]",
    b"[1e400]",
    b"[-1e400]",
    b"[NaN]",
    b"[Infinity, 1]",
    b"[-Infinity]",
    b"[true, 1.0]",
    b"[false]",
    b"[null]",
    b'["1.5"]',
    b"[]",
    b"[[1.0]]",
    b"[1.0,]",
    b"[1.0 2.0]",
    b"[1.0] trailing",
    b"[1.0][2.0]",
    b'[1.0, {"a": 1}]',
    b"[" + b"9" * 400 + b"]",
    b"[0x10]",
    b"[01]",
    b"[1.]",
    b"[.5]",
    b"[+1]",
    b"[1e5, 2E-3, 3.25e+2]",
    b"[ 1.0 ,\n\t2.0 ]",
    b"\xef\xbb\xbf[1.0]",
    b"[1.0]\n",
    b"[" * 5000 + b"]" * 5000,
    "[1.0, 2.0]".encode("utf-16"),
    b"[\xff]",
    b"[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]",
]


@pytest.mark.parametrize("raw", EDGE_BODIES, ids=range(len(EDGE_BODIES)))
def test_the_fast_body_path_accepts_only_what_the_general_path_accepts(make_app, raw):
    from werkzeug.exceptions import HTTPException

    from mlapi.api import bodies
    from mlapi.api.schemas import Features
    from mlapi.errors import ValidationProblem

    app = make_app(MAX_FEATURES=10)
    context = dict(method="POST", data=raw, content_type="application/json")
    with app.test_request_context("/predict", **context):
        fast = bodies.bare_row()
    with app.test_request_context("/predict", **context):
        try:
            general = bodies.parse(Features).root
        except (HTTPException, ValidationProblem):
            general = None
    if fast is not None:
        assert general is not None and fast == general
        assert [type(x) for x in fast] == [type(x) for x in general]
    if raw == b"[1.0,2.0,3.0,4.0]":
        assert fast == [1.0, 2.0, 3.0, 4.0]  # the common body takes the fast path
