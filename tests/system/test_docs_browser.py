"""/docs in a real headless browser (Debian's chromium, driven by playwright) against a
real gunicorn, with every other host blocked: Swagger UI logs in through its Authorize
dialog and calls the API; ReDoc renders the document."""

import os
import shutil
from urllib.parse import urlsplit

import pytest

from tests.helpers import PASSWORD

pytestmark = pytest.mark.slow

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


def page_on_this_server(chromium, server):
    """A new page whose requests to any other host are aborted and listed (the second value)."""
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
    return page, elsewhere


def test_swagger_ui_logs_in_through_authorize_and_calls_the_api(servers, chromium):
    """In a real browser with every other host blocked: /docs renders the finished document,
    the Authorize dialog logs in with the OAuth2 password flow at /token, and "Try it out"
    on GET /users/me answers 200 with the user."""
    server = servers(create=False)
    created = server.flask("users", "create", "alice", "--password", PASSWORD)
    assert created.returncode == 0, created.stderr
    server.start()
    page, elsewhere = page_on_this_server(chromium, server)
    token_requests = []
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


def test_redoc_renders_the_document(servers, chromium):
    """ReDoc, loaded only from this server, renders the operations of /openapi.json."""
    server = servers()
    page, elsewhere = page_on_this_server(chromium, server)
    page.goto(server.url("/docs/redoc/"))
    page.get_by_text("/users/me").first.wait_for(timeout=20_000)
    assert "mlapi" in page.locator("h1").first.inner_text()
    assert elsewhere == []
