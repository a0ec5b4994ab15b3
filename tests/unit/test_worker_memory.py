"""What a worker loads: modules that only some requests need stay out, also after it has
served a login and a prediction (each costs every worker memory; docs/operations.md)."""

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import PASSWORD, run_probe

ROOT = Path(__file__).resolve().parents[2]

# Loaded on demand, never by a login or a prediction: migrations (when the schema is
# behind, and `flask db`), the OpenAPI document (first /openapi.json or /docs), e-mail
# checks (user changes), ONNX (a model that needs it), tracing (OTEL_* set), host figures
# (/health/metrics), RSA/EC keys (mlapi signs HS256 only).
ON_DEMAND = [
    "alembic",
    "flask_migrate",
    "spectree",
    "email_validator",
    "onnx",
    "onnxruntime",
    "opentelemetry",
    "psutil",
    "cryptography.hazmat",
]

# SQLAlchemy (about 14 MiB per worker, 20 with its ORM), Alembic and Flask-Migrate: the
# request path uses the DB-API drivers (mlapi.sql); `flask db` and the child process that
# upgrades a schema load them.
SQLALCHEMY = ["sqlalchemy", "alembic", "flask_migrate", "flask_sqlalchemy"]

# Loads the app as a gunicorn worker does (wsgi, configured by the MLAPI_* environment);
# "setup" migrates the database and adds the user, "serve" logs in, predicts, reads the
# profile, refreshes, logs out, then GETs any further paths given.
PROBE = """
import json, sys
import wsgi
from mlapi import users

app = wsgi.app
if sys.argv[1] == "setup":
    with app.app_context():
        users.create("probe", sys.argv[2])
    sys.exit()
client = app.test_client()
login = client.post("/token", data={"username": "probe", "password": sys.argv[2]})
token = login.get_json()["access_token"]
auth = {"Authorization": f"Bearer {token}"}
predict = client.post("/v1/predict", json=[1.0, 2.0, 3.0, 4.0], headers=auth)
# The rest of what reads or writes users and revocations: profile, refresh, logout.
me = client.get("/users/me", headers=auth)
refresh = client.post(
    "/token",
    data={"grant_type": "refresh_token", "refresh_token": login.get_json()["refresh_token"]},
)
logout = client.post("/logout", headers=auth)
others = [client.get(path).status_code for path in sys.argv[3:]]
import jwt
print("PROBE", json.dumps({
    "statuses": [login.status_code, predict.status_code, *others],
    "session": [me.status_code, refresh.status_code, logout.status_code],
    "modules": sorted(sys.modules),
    "has_crypto": jwt.algorithms.has_crypto,
}))
"""


def serve(tmp_path, *paths, **settings):
    """Start a worker on a migrated database, log in, predict, read the profile, refresh,
    log out, GET ``paths``; what it loaded."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MLAPI_ENV": "production",
        "MLAPI_SECRET_KEY": secrets.token_urlsafe(48),
        "MLAPI_INSTANCE_PATH": str(tmp_path / "instance"),
        "MLAPI_MODEL_DIR": str(tmp_path / "models"),
        "MLAPI_LOG_LEVEL": "WARNING",
        "MLAPI_DATABASE_URL": f"sqlite:///{tmp_path / 'mlapi.db'}",
        **{f"MLAPI_{key}": value for key, value in settings.items()},
    }
    (tmp_path / "models").mkdir()
    assert run_probe(PROBE, "setup", PASSWORD, *paths, env=env) == []
    [report] = run_probe(PROBE, "serve", PASSWORD, *paths, env=env)
    assert report["statuses"] == [200, 200] + [200] * len(paths)
    assert report["session"] == [200, 200, 200]
    return report


def loaded(report, names):
    """Which of ``names`` (packages, with their submodules) the worker imported."""
    return sorted(
        name
        for name in names
        if any(module == name or module.startswith(name + ".") for module in report["modules"])
    )


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    return serve(tmp_path_factory.mktemp("embedded"), "/health/ready")


def test_embedded_worker_loads_nothing_on_demand(embedded):
    # SQLite: no PostgreSQL dialect, no Redis client either.
    assert loaded(embedded, [*ON_DEMAND, "psycopg", "redis"]) == []
    assert "cryptography" not in embedded["modules"]


def test_embedded_worker_serves_without_sqlalchemy(embedded):
    assert "sqlite3" in embedded["modules"]
    assert loaded(embedded, SQLALCHEMY) == []


def test_pyjwt_runs_without_cryptography(embedded):
    """HS256 needs only hmac; PyJWT's RSA/EC support (cryptography) stays unloaded."""
    assert embedded["has_crypto"] is False


def test_scale_out_worker_loads_nothing_on_demand(tmp_path, redis_url, postgres_url):
    """With Redis and PostgreSQL: redis-py is imported without OpenTelemetry's metrics
    (and psutil through them), which it would load whenever they are installed."""
    report = serve(
        tmp_path,
        "/health/ready",
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=f"mlapi-test-{uuid.uuid4().hex[:8]}:",
        DATABASE_URL=postgres_url,
    )
    assert "redis" in report["modules"] and "psycopg" in report["modules"]
    assert loaded(report, ON_DEMAND) == []
    assert loaded(report, SQLALCHEMY) == []


def test_the_probe_sees_what_a_request_loads(tmp_path):
    """The OpenAPI document loads spectree (so the checks above can fail)."""
    report = serve(tmp_path, "/openapi.json")
    assert loaded(report, ON_DEMAND) == ["spectree"]


def test_redis_leaves_opentelemetry_importable():
    """OpenTelemetry is hidden only while redis-py loads: tracing imports it afterwards."""
    code = (
        "import sys, config; config.import_redis();"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')];"
        "import opentelemetry.sdk.metrics, opentelemetry.metrics; print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def test_cryptography_stays_importable_for_others():
    code = "import mlapi, cryptography, jwt; print(jwt.algorithms.has_crypto)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if "ModuleNotFoundError" in out.stderr and "cryptography" in out.stderr:
        pytest.skip("cryptography is not installed here")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
