"""Secrets and modes: production refuses weak settings; development shares one generated secret."""

import os
import stat

import pytest

from config import ConfigurationError, TestingConfig
from mlapi import create_app


def settings(**overrides):
    base = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
    base.update(overrides)
    return base


@pytest.mark.parametrize("secret", [None, "", "too-short-secret"])
def test_production_refuses_a_missing_or_short_secret(tmp_path, secret):
    """MLAPI_ENV=production without a 32-byte secret fails at start, naming the variable."""
    config = settings(
        ENV="production", SECRET_KEY=secret, DATABASE_URL=f"sqlite:///{tmp_path}/x.db"
    )
    with pytest.raises(ConfigurationError, match="MLAPI_SECRET_KEY"):
        create_app(config, instance_path=tmp_path)


def test_production_accepts_a_long_secret(tmp_path):
    """A secret of 32 bytes or more is used as given."""
    secret = "s" * 32
    app = create_app(
        settings(ENV="production", SECRET_KEY=secret, DATABASE_URL=f"sqlite:///{tmp_path}/x.db"),
        instance_path=tmp_path,
    )
    assert app.config["JWT_SECRET_KEY"] == secret


def test_development_generates_one_private_secret(tmp_path):
    """Without a secret outside production, one is generated once, mode 0600, and reused."""
    config = settings(ENV="development", SECRET_KEY=None, DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    first = create_app(config, instance_path=tmp_path)
    second = create_app(config, instance_path=tmp_path)
    path = tmp_path / "secret_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert len(first.config["SECRET_KEY"]) >= 32


def test_environment_variables_override_defaults(tmp_path, monkeypatch):
    """MLAPI_<KEY> sets config key <KEY>, parsed as JSON when it parses."""
    monkeypatch.setenv("MLAPI_MAX_FEATURES", "42")
    monkeypatch.setenv("MLAPI_PUBLIC_RATE_LIMIT", "7/minute")
    monkeypatch.setenv("MLAPI_SECRET_KEY", "e" * 40)
    monkeypatch.setenv("MLAPI_DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    app = create_app(instance_path=tmp_path)
    assert app.config["MAX_FEATURES"] == 42
    assert app.config["PUBLIC_RATE_LIMIT"] == "7/minute"
    assert app.config["SECRET_KEY"] == "e" * 40


def test_tokens_are_hs256_only(app):
    """Tokens are signed and verified with HS256 alone."""
    assert app.config["JWT_ALGORITHM"] == "HS256"
    assert app.config["JWT_DECODE_ALGORITHMS"] == ["HS256"]
    assert app.config["JWT_TOKEN_LOCATION"] == ["headers"]
