"""What a worker loads at start: modules that only some requests need stay out."""

import json
import subprocess
import sys

import pytest

# Loaded on demand: by /health/metrics, by a logout on the other database, by RSA/EC keys
# (mlapi signs HS256 only).
ON_DEMAND = ["psutil", "sqlalchemy.dialects.postgresql", "cryptography"]

PROBE = f"""
import json, sys
from mlapi import create_app
from config import TestingConfig
settings = {{k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}}
settings["DATABASE_URL"] = "sqlite:///" + sys.argv[1]
create_app(settings, instance_path=sys.argv[2])
import jwt
print(json.dumps({{"loaded": sorted(m for m in {ON_DEMAND!r} if m in sys.modules),
                  "has_crypto": jwt.algorithms.has_crypto}}))
"""


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """A worker's start on a database already migrated (the first start migrates it,
    which loads Alembic and more, once)."""
    folder = tmp_path_factory.mktemp("worker")
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(folder / "mlapi.db"), str(folder / "instance")],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_modules_some_requests_need_are_not_loaded_at_start(started):
    assert started["loaded"] == []


def test_pyjwt_runs_without_cryptography(started):
    """HS256 needs only hmac; PyJWT's RSA/EC support (cryptography) stays unloaded."""
    assert started["has_crypto"] is False


def test_cryptography_stays_importable_for_others():
    code = "import mlapi, cryptography, jwt; print(jwt.algorithms.has_crypto)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if "ModuleNotFoundError" in out.stderr and "cryptography" in out.stderr:
        pytest.skip("cryptography is not installed here")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
