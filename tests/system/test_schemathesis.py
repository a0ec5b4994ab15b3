"""A property-based run of schemathesis against the OpenAPI document of a live server."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors_or_schema_violations(servers, tmp_path):
    """A property-based run against live gunicorn: no 5xx, every response matches the document."""
    server = servers(
        env={
            "MLAPI_PREDICT_RATE_LIMIT": "100000/minute",
            "MLAPI_CUSTOM_RATE_LIMIT": "100000/minute",
        },
        create=False,
    )
    assert (
        server.flask("users", "create", "fuzz", "--admin", "--password", "fuzz-pass-123").returncode
        == 0
    )
    server.start()
    token = server.token("fuzz", "fuzz-pass-123")["Authorization"]
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "schemathesis"),
            "run",
            server.url("/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_headers_conformance,response_schema_conformance",
            "--header",
            f"Authorization: {token}",
            "--exclude-path",
            "/logout",
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-color",
            "--report-dir",
            str(tmp_path / "schemathesis"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
