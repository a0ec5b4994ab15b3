"""Secrets and modes: production refuses weak settings; development shares one generated secret."""

import os
import stat
import time

import pytest

from config import (
    ADAPTERS,
    FILE_KEYS,
    KEYS,
    KNOWN_NAMES,
    OTHER_NAMES,
    ConfigurationError,
    TestingConfig,
    settings_from_environ,
    wait_for_database,
)
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


# --- every setting typed and checked -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MLAPI_MAX_FEATURES", "abc", "valid integer"),
        ("MLAPI_MAX_FEATURES", "0", "greater than or equal to 1"),
        ("MLAPI_MAX_CONTENT_LENGTH", "1.5", "valid integer"),
        ("MLAPI_TRUSTED_PROXIES", "-1", "greater than or equal to 0"),
        ("MLAPI_REDIS_SOCKET_TIMEOUT", "0", "greater than 0"),
        ("MLAPI_DB_WAIT_SECONDS", "soon", "valid number"),
        ("MLAPI_BATCH_COUNTS_ROWS", "sometimes", "valid boolean"),
        ("MLAPI_ENV", "prod", "'development', 'production' or 'testing'"),
        ("MLAPI_RATE_LIMIT_STRATEGY", "leaky", "moving-window"),
        ("MLAPI_LOG_LEVEL", "loud", "'DEBUG'"),
        ("MLAPI_LOGIN_RATE_LIMIT", "ten", "10/minute"),
        ("MLAPI_DATABASE_URL", "not a url", "database URL"),
        ("MLAPI_REDIS_URL", "127.0.0.1:6379", "Redis URL"),
        ("MLAPI_PASSWORD_HASH_METHOD", "md5", "werkzeug hash method"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(name, value, message):
    with pytest.raises(ConfigurationError, match=message) as caught:
        settings_from_environ({name: value})
    assert caught.value.setting == name
    assert name in caught.value.problem
    assert "default" in caught.value.fix


@pytest.mark.parametrize(
    ("name", "value", "key", "expected"),
    [
        ("MLAPI_MAX_FEATURES", "42", "MAX_FEATURES", 42),
        ("MLAPI_BATCH_COUNTS_ROWS", "true", "BATCH_COUNTS_ROWS", True),
        ("MLAPI_REDIS_SOCKET_TIMEOUT", "1", "REDIS_SOCKET_TIMEOUT", 1.0),
        ("MLAPI_LOG_LEVEL", "debug", "LOG_LEVEL", "DEBUG"),
        ("MLAPI_REDIS_KEY_PREFIX", "123", "REDIS_KEY_PREFIX", "123"),
        (
            "MLAPI_SECRET_KEY",
            "12345678901234567890123456789012",
            "SECRET_KEY",
            "12345678901234567890123456789012",
        ),
    ],
)
def test_good_values_are_typed(name, value, key, expected):
    settings, warnings = settings_from_environ({name: value})
    assert settings[key] == expected
    assert type(settings[key]) is type(expected)
    assert warnings == []


def test_a_bad_secret_is_never_echoed():
    with pytest.raises(ConfigurationError) as caught:
        settings_from_environ({"MLAPI_ENV": "production", "MLAPI_SECRET_KEY": "hunter2"})
    assert "hunter2" not in str(caught.value) + caught.value.fix


def test_an_unknown_name_is_a_warning_in_development():
    _settings, warnings = settings_from_environ({"MLAPI_REDIS_ULR": "redis://x"})
    assert warnings == [
        "MLAPI_REDIS_ULR is not a setting of mlapi and is ignored (did you mean MLAPI_REDIS_URL?)"
    ]


def test_an_unknown_name_is_refused_in_production():
    environ = {"MLAPI_ENV": "production", "MLAPI_SECRET_KEY": "s" * 32, "MLAPI_MAX_FEATUERS": "5"}
    with pytest.raises(ConfigurationError, match="did you mean MLAPI_MAX_FEATURES") as caught:
        settings_from_environ(environ)
    assert caught.value.setting == "MLAPI_MAX_FEATUERS"


def test_names_read_outside_config_are_known():
    environ = {name: "x" for name in OTHER_NAMES}
    assert settings_from_environ(environ) == ({}, [])
    assert {"MLAPI_TEST_REDIS_URL", "MLAPI_VENV", "MLAPI_INSTANCE_PATH"} <= KNOWN_NAMES


def test_every_setting_of_config_is_typed():
    """A setting added without a type would escape the checks at start."""
    assert sorted(ADAPTERS) == sorted(KEYS)


@pytest.mark.parametrize("key", FILE_KEYS)
def test_a_setting_can_be_read_from_a_file(tmp_path, key):
    value = {
        "SECRET_KEY": "f" * 40,
        "DATABASE_URL": "postgresql+psycopg://u:p@db:5432/mlapi",
        "REDIS_URL": "redis://cache:6379/0",
    }[key]
    path = tmp_path / "value"
    path.write_text(value + "\n")
    settings, _ = settings_from_environ({f"MLAPI_{key}_FILE": str(path)})
    assert settings[key] == value


def test_a_setting_and_its_file_together_are_refused(tmp_path):
    path = tmp_path / "url"
    path.write_text("redis://cache:6379/0")
    environ = {"MLAPI_REDIS_URL": "redis://other:6379/0", "MLAPI_REDIS_URL_FILE": str(path)}
    with pytest.raises(ConfigurationError, match="both MLAPI_REDIS_URL and MLAPI_REDIS_URL_FILE"):
        settings_from_environ(environ)


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_a_missing_or_empty_file_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=str(path)) as caught:
        settings_from_environ({"MLAPI_SECRET_KEY_FILE": str(path)})
    assert caught.value.setting == "MLAPI_SECRET_KEY_FILE"


def test_an_override_is_checked_too(tmp_path):
    with pytest.raises(ConfigurationError, match="MLAPI_MAX_BATCH"):
        create_app(settings(MAX_BATCH=0), instance_path=tmp_path)


def test_an_instance_path_under_a_file_is_refused_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="Not a directory") as caught:
        create_app(settings(), instance_path=blocker / "instance")
    assert caught.value.setting == "MLAPI_INSTANCE_PATH"


def test_waiting_for_a_database_that_is_down_ends_naming_the_setting():
    url = "postgresql+psycopg://postgres@127.0.0.1:9/none"
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="within 0.3 s") as caught:
        wait_for_database(url, 0.3)
    assert time.monotonic() - started < 5
    assert caught.value.setting == "MLAPI_DATABASE_URL"


def test_sqlite_is_not_waited_for():
    wait_for_database("sqlite:///nowhere/at/all.db", 0)


def test_an_empty_optional_setting_means_unset():
    settings, _ = settings_from_environ({"MLAPI_REDIS_URL": "", "MLAPI_DATABASE_URL": ""})
    assert settings == {"REDIS_URL": None, "DATABASE_URL": None}


def test_a_bad_database_url_is_not_echoed():
    with pytest.raises(ConfigurationError, match="MLAPI_DATABASE_URL") as caught:
        settings_from_environ({"MLAPI_DATABASE_URL": "pw-secret-in-here"})
    assert "pw-secret-in-here" not in caught.value.problem
