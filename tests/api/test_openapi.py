"""The OpenAPI document describes the API, and the live service keeps to it."""

from tests.helpers import PREDICTION_ENDPOINTS

DOCUMENTED = [
    ("post", "/token"),
    ("post", "/token/refresh"),
    ("post", "/logout"),
    ("get", "/users/me"),
    ("get", "/public"),
    ("delete", "/cache/invalidate"),
    ("get", "/"),
    ("get", "/metrics"),
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/health/metrics"),
    *[("post", path) for path in PREDICTION_ENDPOINTS],
]


def test_document_lists_every_endpoint(client):
    """/openapi.json is OpenAPI 3.1 and has every endpoint of the API."""
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    for method, path in DOCUMENTED:
        assert method in document["paths"].get(path, {}), (method, path)
    assert not any(path.startswith("/docs") for path in document["paths"])


def test_bearer_scheme_and_protected_operations(client):
    """The bearer scheme is declared, and prediction endpoints require it."""
    document = client.get("/openapi.json").get_json()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert scheme == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for path in PREDICTION_ENDPOINTS:
        assert document["paths"][path]["post"]["security"] == [{"bearer": []}, {"oauth2": []}]
    assert "security" not in document["paths"]["/public"]["get"]


def test_errors_are_documented_as_problems(client):
    """Documented errors are problem+json, except readiness's own body and the inference
    protocol's {"error"} bodies."""
    document = client.get("/openapi.json").get_json()
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                (content_type,) = response["content"]
                own_shape = path == "/health/ready" or path.startswith(
                    ("/v2/models", "/v2/health", "/v2/repository")
                )
                if content_type == "application/problem+json":
                    assert response["content"][content_type]["schema"]["$ref"].endswith("Problem")
                else:
                    assert own_shape and status in ("400", "404", "503"), (path, status)


def test_prediction_body_schema_is_a_number_array(client):
    """The request body of a prediction is a non-empty array of numbers."""
    document = client.get("/openapi.json").get_json()
    assert document["components"]["schemas"]["Features"]["type"] == "array"
    assert document["components"]["schemas"]["Features"]["minItems"] == 1
    assert document["components"]["schemas"]["Features"]["items"] == {"type": "number"}


def test_login_is_documented_as_a_urlencoded_form(client):
    """/token takes the OAuth2 password form, as tutorial clients send it."""
    body = client.get("/openapi.json").get_json()["paths"]["/token"]["post"]["requestBody"]
    assert list(body["content"]) == ["application/x-www-form-urlencoded"]


def test_interactive_docs_are_served(client):
    """/docs is Swagger UI on the finished /openapi.json; ReDoc is at /docs/redoc/."""
    page = client.get("/docs")
    assert page.status_code == 200
    assert b'id="swagger-ui" data-spec-url="/openapi.json"' in page.data
    assert b'spec-url="/openapi.json"' in client.get("/docs/redoc/").data
