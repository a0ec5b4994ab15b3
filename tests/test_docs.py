"""/docs works offline: Swagger UI and ReDoc from a pinned package, on the finished
/openapi.json, whose OAuth2 password flow lets "Authorize" log in."""

import os
import re
import shutil
import sys
from urllib.parse import urlsplit

import pytest
from openapi_spec_validator import validate

from tests.conftest import PASSWORD

CHROMIUM = "/usr/bin/chromium"
# Headless and quiet: no sandbox (root in CI), no GPU, no calls home of its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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
    import subprocess

    from tests.servers import ROOT

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- a real browser --------------------------------------------------------------


@pytest.fixture
def chromium():
    """Debian's chromium driven by playwright (which never downloads a browser here)."""
    if not (os.path.exists(CHROMIUM) and shutil.which(CHROMIUM)):
        message = f"no chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this is a failure, not a skip")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        browser.close()


@pytest.mark.slow
def test_swagger_ui_logs_in_through_authorize_and_calls_the_api(servers, chromium):
    """In a real browser with every other host blocked: /docs renders the finished document,
    the Authorize dialog logs in with the OAuth2 password flow at /token, and "Try it out"
    on GET /users/me answers 200 with the user."""
    server = servers(create=False)
    created = server.flask("users", "create", "alice", "--password", PASSWORD)
    assert created.returncode == 0, created.stderr
    server.start()
    origin = urlsplit(server.base).netloc
    elsewhere = []
    token_requests = []

    def only_this_server(route):
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page = chromium.new_page()
    page.route("**/*", only_this_server)
    page.on(
        "request",
        lambda request: token_requests.append(request) if request.url.endswith("/token") else None,
    )
    page.goto(server.url("/docs"))
    page.locator(".swagger-ui .info .title").filter(has_text="mlapi").wait_for(timeout=20_000)

    page.locator(".auth-wrapper .authorize").click()
    oauth2 = page.locator(".auth-container").filter(has_text="oauth2")
    oauth2.locator("#oauth_username").fill("alice")
    oauth2.locator("#oauth_password").fill(PASSWORD)
    oauth2.locator("button.authorize").click()
    oauth2.locator("button", has_text="Logout").wait_for(timeout=10_000)
    oauth2.locator("button.btn-done").click()

    assert len(token_requests) == 1
    token_response = token_requests[0].response()
    assert token_response.status == 200
    assert "grant_type=password" in token_requests[0].post_data

    operation = page.locator(".opblock").filter(
        has=page.locator('.opblock-summary-path[data-path="/users/me"]')
    )
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for(timeout=10_000)
    assert status.inner_text().strip() == "200"
    body = operation.locator(
        ".live-responses-table tr.response .response-col_description pre"
    ).first
    assert '"username": "alice"' in body.inner_text()
    assert elsewhere == []


@pytest.mark.slow
def test_redoc_renders_the_document(servers, chromium):
    """ReDoc, loaded only from this server, renders the operations of /openapi.json."""
    server = servers()
    origin = urlsplit(server.base).netloc
    elsewhere = []

    def only_this_server(route):
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page = chromium.new_page()
    page.route("**/*", only_this_server)
    page.goto(server.url("/docs/redoc/"))
    page.get_by_text("/users/me").first.wait_for(timeout=20_000)
    assert "mlapi" in page.locator("h1").first.inner_text()
    assert elsewhere == []
