"""/docs works offline: Swagger UI and ReDoc from a pinned package, on the finished
/openapi.json, whose OAuth2 password flow lets "Authorize" log in (the browser test is
tests/system/test_docs_browser.py)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from openapi_spec_validator import validate

ROOT = Path(__file__).resolve().parents[2]


def test_document_passes_openapi_spec_validator(client):
    """The finished document is valid OpenAPI 3.1 (openapi-spec-validator)."""
    document = client.get("/openapi.json").get_json()
    validate(document)
    assert document["paths"]["/metrics"]["get"]["responses"]["200"]


def test_oauth2_password_flow_beside_bearer(client):
    """Operations that need a token take either the bearer scheme or the OAuth2 password
    flow, whose token and refresh URL is /token."""
    document = client.get("/openapi.json").get_json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["oauth2"]["type"] == "oauth2"
    assert schemes["oauth2"]["flows"] == {
        "password": {"tokenUrl": "/token", "refreshUrl": "/token", "scopes": {}}
    }
    for path, method in [("/predict", "post"), ("/users/me", "get"), ("/logout", "post")]:
        assert document["paths"][path][method]["security"] == [{"bearer": []}, {"oauth2": []}]


def test_token_endpoint_documents_both_grants_and_oauth_errors(client):
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/token"]["post"]
    (content_type,) = operation["requestBody"]["content"]
    assert content_type == "application/x-www-form-urlencoded"
    form = document["components"]["schemas"]["TokenForm"]["properties"]
    assert form["grant_type"]["enum"] == ["password", "refresh_token"]
    assert {"username", "password", "refresh_token"} <= set(form)
    problem = document["components"]["schemas"]["TokenProblem"]
    assert {"error", "error_description"} <= set(problem["required"])
    for status in ("400", "401", "429"):
        schema = operation["responses"][status]["content"]["application/problem+json"]["schema"]
        assert schema["$ref"].endswith("/TokenProblem")


def local_references(page):
    """Every src and href of an HTML page; all must be paths on this server."""
    references = re.findall(r'(?:src|href|spec-url)="([^"]+)"', page)
    assert references
    for reference in references:
        assert reference.startswith("/") and not reference.startswith("//"), reference
    return references


@pytest.mark.parametrize("path", ["/docs", "/docs/redoc/"])
def test_docs_pages_load_everything_from_this_server(client, path):
    """No CDN: each page's scripts and styles are served by the app itself."""
    page = client.get(path)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html
    for reference in local_references(html):
        asset = client.get(reference)
        assert asset.status_code == 200, reference
        assert len(asset.data) > 0


def test_docs_assets_are_the_pinned_packages_files(client):
    """Swagger UI 5 and ReDoc 2 from drf-spectacular-sidecar, cached by browsers for a day."""
    swagger = client.get("/docs/assets/swagger-ui-dist/swagger-ui-bundle.js")
    redoc = client.get("/docs/assets/redoc/bundles/redoc.standalone.js")
    assert swagger.status_code == redoc.status_code == 200
    assert swagger.mimetype == redoc.mimetype == "text/javascript"
    assert "max-age=86400" in swagger.headers["Cache-Control"]
    assert b"SwaggerUIBundle" in swagger.data
    assert b'getAttribute("spec-url")' in redoc.data


@pytest.mark.parametrize(
    "path", ["/docs/assets/../__init__.py", "/docs/assets/%2e%2e/__init__.py", "/docs/assets/nope"]
)
def test_docs_assets_do_not_leave_the_package(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_old_swagger_path_redirects(client):
    response = client.get("/docs/swagger/")
    assert response.status_code == 308
    assert response.headers["Location"] == "/docs"


def test_serving_the_docs_never_imports_django():
    """The asset package depends on Django; mlapi only reads its files."""
    code = (
        "import sys, tempfile\n"
        "from config import TestingConfig\n"
        "from mlapi import create_app\n"
        "settings = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}\n"
        "app = create_app(settings, instance_path=tempfile.mkdtemp())\n"
        "client = app.test_client()\n"
        "assert client.get('/docs').status_code == 200\n"
        "assert client.get('/docs/assets/swagger-ui-dist/swagger-ui.css').status_code == 200\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'drf_spectacular_sidecar')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
