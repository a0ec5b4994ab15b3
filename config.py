"""mlapi configuration: the one place that reads settings.

Defaults live in these classes; every key can be overridden by an environment
variable of the same name prefixed with ``MLAPI_`` (``MLAPI_PREDICT_RATE_LIMIT``
sets ``PREDICT_RATE_LIMIT``), and the secret and URLs by a file named in
``MLAPI_<KEY>_FILE``. Each key's annotation is its type and range: values are
parsed and checked by pydantic at start, and a bad one stops the process with one
JSON log line naming it (:func:`start`, :func:`checked_settings`).

:func:`configure` applies them to an app, checks them, loads the secret, and derives
the settings of the libraries (``DATABASE_*``, ``JWT_*``, ``RATELIMIT_*``,
``CACHE_*``) from them; a library key set explicitly wins over the derived one.
"""

import contextlib
import datetime
import difflib
import json
import math
import os
import re
import secrets
import sys
import time
from datetime import timedelta
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import AfterValidator, BeforeValidator, Field, TypeAdapter, ValidationError

MIN_SECRET_BYTES = 32
LIMIT_KEYS = (
    "PREDICT_RATE_LIMIT",
    "PUBLIC_RATE_LIMIT",
    "PREDICT_LIMITED_RATE_LIMIT",
    "CUSTOM_RATE_LIMIT",
    "LOGIN_RATE_LIMIT",
)
# Settings that may instead be read from a file named by MLAPI_<KEY>_FILE (Docker and
# Kubernetes mount secrets as files).
FILE_KEYS = ("SECRET_KEY", "DATABASE_URL", "REDIS_URL")
# MLAPI_* names read outside this class: the scripts, the tests, the metrics.
OTHER_NAMES = (
    "MLAPI_INSTANCE_PATH",
    "MLAPI_VENV",
    "MLAPI_BUILD_COMMIT",
    "MLAPI_TEST_REDIS_URL",
    "MLAPI_TEST_POSTGRES_URL",
)
HASH_METHOD = re.compile(r"^(scrypt(:\d+:\d+:\d+)?|pbkdf2(:sha\d+(:\d+)?)?)$")


def _rate_limit(value):
    try:
        parse_many(value)
    except ValueError:
        raise ValueError("not a rate limit like '10/minute'") from None
    return value


def _database_url(value):
    if value is not None:
        from mlapi.sql import parse_url  # after config itself: mlapi imports config

        parse_url(value)  # its ValueError says what is wrong
    return value


def _redis_url(value):
    if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("not a Redis URL like 'redis://host:6379/0'")
    return value


def _origins(value):
    """CORS origins as a list, from a list or a comma-separated string, each checked."""
    if isinstance(value, str):
        value = value.split(",")
    origins = [origin.strip().rstrip("/") for origin in value if origin.strip()]
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (
            parts.scheme not in ("http", "https") or not parts.netloc or parts.path
        ):
            raise ValueError(
                f"{origin!r} is not an origin; write scheme://host[:port], "
                "e.g. https://app.example.com"
            )
    return origins


def _hash_method(value):
    if not HASH_METHOD.match(value):
        raise ValueError("not a werkzeug hash method like 'scrypt:32768:8:1' or 'pbkdf2:sha256'")
    return value


Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
RateLimit = Annotated[str, AfterValidator(_rate_limit)]


class Config:
    # Every setting is typed and range-checked at start (see validate_settings); a bad
    # value stops the service with one log line naming it.

    # Mode. Production refuses unsafe settings and unknown MLAPI_* names.
    ENV: Literal["development", "production", "testing"] = "development"

    # Secrets. In production MLAPI_SECRET_KEY (>= 32 bytes) is required; outside
    # production a random key is generated once into the instance folder.
    SECRET_KEY: str | None = None

    # Storage. SQLite under the instance folder unless a URL is given: sqlite:///path
    # (relative: under the instance folder) or postgresql+psycopg://user:pw@host:port/db.
    DATABASE_URL: Annotated[str | None, AfterValidator(_database_url)] = None
    # Seconds any one database wait may take: a PostgreSQL statement (ended by the server)
    # and every answer from it (a client-side deadline, for a frozen server), a free pooled
    # connection, and SQLite's wait for a lock. New PostgreSQL connections: at least 2 s.
    DATABASE_TIMEOUT: Annotated[float, Field(gt=0, le=60)] = 2.0
    # At start, wait this long for the database to accept connections.
    DB_WAIT_SECONDS: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # Redis for shared limits, cache and token revocation. Unset: in-process stores.
    REDIS_URL: Annotated[str | None, AfterValidator(_redis_url)] = None
    REDIS_SOCKET_TIMEOUT: Annotated[float, Field(gt=0, le=60)] = 0.25
    # After a Redis failure, skip it (using fallbacks) for this many seconds.
    REDIS_RETRY_SECONDS: Annotated[float, Field(ge=0, le=3600)] = 2.0
    REDIS_KEY_PREFIX: str = "mlapi:"

    # Tokens and passwords.
    ACCESS_TOKEN_MINUTES: Annotated[float, Field(gt=0, le=1440)] = 30
    REFRESH_TOKEN_DAYS: Annotated[float, Field(gt=0, le=365)] = 7
    # werkzeug hash method; stored hashes made with other parameters are upgraded at login.
    PASSWORD_HASH_METHOD: Annotated[str, AfterValidator(_hash_method)] = "scrypt:32768:8:1"
    # Shortest password accepted (NIST SP 800-63B: at least 8; 15 where a password is the
    # only factor, as here, under its 2025 revision). Longest: 128. See docs/operations.md.
    PASSWORD_MIN_LENGTH: Annotated[int, Field(ge=8, le=64)] = 8

    # Browsers: origins allowed to call the API cross-origin (CORS), e.g.
    # MLAPI_CORS_ORIGINS='["https://app.example.com"]' or comma-separated; each must be
    # scheme://host[:port] (or "*"). Empty: no CORS headers at all.
    CORS_ORIGINS: Annotated[list[str] | str, AfterValidator(_origins)] = []

    # Request limits.
    MAX_CONTENT_LENGTH: Positive = 1024 * 1024
    MAX_FEATURES: Positive = 10_000
    MAX_BATCH: Positive = 1_000
    # A batch costs the per-user prediction limit one request, or its number of rows if true.
    BATCH_COUNTS_ROWS: bool = False

    # Rate limits (flask-limiter notation, e.g. "10/minute", "100 per hour").
    PREDICT_RATE_LIMIT: RateLimit = "600/minute"
    PUBLIC_RATE_LIMIT: RateLimit = "5/minute"
    PREDICT_LIMITED_RATE_LIMIT: RateLimit = "10/minute"
    CUSTOM_RATE_LIMIT: RateLimit = "100/minute"
    LOGIN_RATE_LIMIT: RateLimit = "10/minute"
    RATE_LIMIT_STRATEGY: Literal["fixed-window", "moving-window", "sliding-window-counter"] = (
        "moving-window"
    )
    # Number of reverse proxies in front of the service whose X-Forwarded-For is trusted.
    TRUSTED_PROXIES: Annotated[int, Field(ge=0, le=10)] = 0

    # Prediction cache.
    CACHE_TIMEOUT: NonNegative = 300

    # Models: a model repository (<name>/<version>/<file>, and flat .json/.npz files) loaded
    # at start (optional); see docs/models.md.
    MODEL_DIR: str | None = None
    # Each worker rescans MODEL_DIR this often and serves what changed; 0 turns polling off.
    MODEL_POLL_SECONDS: Annotated[float, Field(ge=0, le=3600)] = 5.0
    # Intra-op threads per ONNX session: one per worker keeps N workers off each other's cores.
    ONNX_THREADS: Annotated[int, Field(ge=1, le=256)] = 1

    # Observability.
    LOG_LEVEL: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(str.upper)
    ] = "INFO"
    METRICS_PER_USER: bool = False
    ACTIVE_USER_WINDOW_SECONDS: Positive = 300

    # Readiness: seconds each dependency check may take.
    READY_CHECK_TIMEOUT: Annotated[float, Field(gt=0, le=30)] = 0.5
    # The checks that must pass for /health/ready to be 200 (models, database, redis).
    # Any other failing check reports "degraded" and keeps the instance ready.
    READY_REQUIRES: str | list[str] = "database,models"


class TestingConfig(Config):
    TESTING = True
    ENV = "testing"
    SECRET_KEY = "test-secret-key-that-is-at-least-32-bytes-long"
    DATABASE_URL = "sqlite://"
    # Cheap hashes keep the suite fast; tests of the scrypt default set it back.
    PASSWORD_HASH_METHOD = "pbkdf2:sha256:1000"


class ConfigurationError(ValueError):
    """The configuration is unsafe or incomplete; the service refuses to start.

    ``setting`` names the environment variable at fault and ``fix`` says what to do.
    """

    setting = None
    fix = "See the Configuration section of the README"

    def __init__(self, problem, setting=None, fix=None):
        super().__init__(problem)
        self.problem = problem
        self.setting = setting or self.setting
        self.fix = fix or self.fix


def refused(setting, problem, fix):
    return ConfigurationError(problem, setting=setting, fix=fix)


# --- reading and checking the environment --------------------------------------------


def _annotations():
    hints = {}
    for klass in reversed(Config.__mro__):
        hints.update(getattr(klass, "__annotations__", {}))
    return {key: TypeAdapter(hint) for key, hint in hints.items() if key.isupper()}


ADAPTERS = _annotations()
KEYS = tuple(key for key in dir(Config) if key.isupper())
KNOWN_NAMES = frozenset(
    [f"MLAPI_{key}" for key in KEYS]
    + [f"MLAPI_{key}_FILE" for key in FILE_KEYS]
    + list(OTHER_NAMES)
)


def _first_error(exc):
    # A validator's own ValueError reads as its message, without pydantic's "Value error, ".
    return exc.errors()[0]["msg"].removeprefix("Value error, ")


def check_value(key, value, from_string=False, shown=True):
    """``value`` typed and range-checked for setting ``key``, or ConfigurationError."""
    adapter = ADAPTERS.get(key)
    if adapter is None:
        return value
    try:
        if from_string and isinstance(getattr(Config, key), list):
            with contextlib.suppress(ValueError):  # a JSON list, else as written
                return adapter.validate_python(json.loads(value))
        if from_string:
            return adapter.validate_strings(value)
        return adapter.validate_python(value)
    except ValidationError as exc:
        name = f"MLAPI_{key}"
        given = f"={value!r}" if shown else ""
        raise refused(
            f"{name}",
            f"{name}{given} is invalid: {_first_error(exc)}",
            f"Set {name} to a valid value or unset it to use the default {getattr(Config, key)!r}",
        ) from None


def read_setting_file(key, environ):
    """The value of MLAPI_<key> read from the file MLAPI_<key>_FILE names."""
    name, file_name = f"MLAPI_{key}", f"MLAPI_{key}_FILE"
    path = environ[file_name]
    if environ.get(name):
        raise refused(
            file_name,
            f"both {name} and {file_name} are set",
            f"Set only one of them ({file_name} for a mounted secret file)",
        )
    try:
        with open(path) as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise refused(
            file_name,
            f"cannot read {path}: {exc.strerror}",
            f"Point {file_name} at a readable file, or make it readable by user {os.getuid()}",
        ) from None
    if not value:
        raise refused(file_name, f"{path} is empty", f"Write the value into {path}")
    return value


def unknown_names(environ):
    """(name, suggestion or None) for each MLAPI_* name no part of mlapi reads."""
    known = sorted(KNOWN_NAMES)
    for name in sorted(environ):
        if name.startswith("MLAPI_") and name not in KNOWN_NAMES:
            close = difflib.get_close_matches(name, known, n=1)
            yield name, (close[0] if close else None)


def settings_from_environ(environ=None):
    """Settings given as ``MLAPI_*`` variables (or their ``_FILE`` variants), typed and
    checked, and the warnings to log; ConfigurationError names the first bad one."""
    environ = os.environ if environ is None else environ
    settings, warnings = {}, []
    for key in KEYS:
        name = f"MLAPI_{key}"
        # Secrets and URLs (which may hold a password) are never echoed in an error.
        shown = key not in FILE_KEYS
        if key in FILE_KEYS and environ.get(f"{name}_FILE"):
            settings[key] = check_value(key, read_setting_file(key, environ), True, shown)
        elif environ.get(name) == "" and getattr(Config, key) is None:
            settings[key] = None  # MLAPI_REDIS_URL= means unset
        elif name in environ:
            settings[key] = check_value(key, environ[name], True, shown)
    production = settings.get("ENV", Config.ENV) == "production"
    if production:
        check_production_secret(settings.get("SECRET_KEY"))
    for name, suggestion in unknown_names(environ):
        hint = f"did you mean {suggestion}?" if suggestion else "see the README's Configuration"
        if production:
            raise refused(
                name,
                f"{name} is not a setting of mlapi ({hint})",
                "Remove it or correct its name; production refuses names it does not know",
            )
        warnings.append(f"{name} is not a setting of mlapi and is ignored ({hint})")
    return settings, warnings


# --- reporting a failed start --------------------------------------------------------


def log_line(level, message, **fields):
    """One JSON log line on stderr, in the shape of the app's logs (usable before logging
    is configured, e.g. in the gunicorn master)."""
    record = {
        "time": datetime.datetime.now().astimezone().strftime("%Y-%m-%dT%H:%M:%S%z"),
        "level": level,
        "logger": "mlapi.config",
        "message": message,
        **fields,
    }
    print(json.dumps(record), file=sys.stderr, flush=True)


# gunicorn's code for "the application failed to load": the master stops, with no restart loop.
EXIT_CONFIGURATION = 4


def exit_on_error(error):
    """Log ``error`` as one JSON line naming the setting and the fix, then exit non-zero."""
    log_line(
        "CRITICAL",
        f"mlapi cannot start: {error.problem}",
        setting=error.setting,
        fix=error.fix,
    )
    # Under gunicorn, 4 ("application failed to load") stops the master instead of
    # respawning workers; elsewhere (the flask CLI) a failure is the usual exit status 1.
    raise SystemExit(EXIT_CONFIGURATION if "gunicorn.arbiter" in sys.modules else 1)


def start(factory):
    """``factory()``, or one JSON line and a non-zero exit when the settings are unusable."""
    try:
        return factory()
    except ConfigurationError as error:
        exit_on_error(error)


def checked_settings():
    """The environment's settings over the defaults, or one JSON line and exit (gunicorn)."""
    try:
        settings, _warnings = settings_from_environ()
    except ConfigurationError as error:
        exit_on_error(error)
    return {key: settings.get(key, getattr(Config, key)) for key in KEYS}


# --- waiting for the database --------------------------------------------------------


def wait_for_database(url, seconds, timeout=2.0):
    """Wait up to ``seconds`` for the database at ``url`` to accept a connection, logging
    each failed attempt; then ConfigurationError. SQLite needs no wait."""
    from mlapi.sql import Database, Unavailable, parse_url

    if not url or parse_url(url).backend == "sqlite":
        return
    url = url.replace("postgres://", "postgresql://", 1)
    shown = parse_url(url).shown()
    database = Database(url, timeout, connect_arguments(url, timeout))
    deadline = time.monotonic() + seconds
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                with database.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except Unavailable as exc:
                reason = str(exc.__cause__ or exc).strip().splitlines()[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise refused(
                        "MLAPI_DATABASE_URL",
                        f"the database at {shown} did not accept connections within "
                        f"{seconds:g} s ({attempt} attempts): {reason}",
                        "Start the database or correct MLAPI_DATABASE_URL; "
                        "MLAPI_DB_WAIT_SECONDS sets how long to wait at start",
                    ) from None
                log_line(
                    "WARNING",
                    f"waiting for the database at {shown}: {reason}",
                    attempt=attempt,
                    seconds_left=round(left, 1),
                )
                time.sleep(min(1.0, left))
    finally:
        database.dispose()


def instance_path():
    """The instance folder given by MLAPI_INSTANCE_PATH, or None for Flask's default."""
    return os.environ.get("MLAPI_INSTANCE_PATH")


def configure(app, overrides=None):
    """Defaults, then ``MLAPI_*`` environment variables (or their ``_FILE`` variants), then
    ``overrides`` (a dict or an object with upper-case attributes); every setting checked;
    then the instance folder, the secret and the library keys."""
    config = app.config
    config.from_object(Config)
    settings, warnings = settings_from_environ()
    config.update(settings)
    if isinstance(overrides, dict):
        config.from_mapping(overrides)
    elif overrides is not None:
        config.from_object(overrides)
    check_password_min_length(config)  # strictly a whole number, even from overrides
    for key in KEYS:
        config[key] = check_value(key, config[key], shown=key not in FILE_KEYS)
    app.extensions["mlapi.settings_warnings"] = warnings
    check_instance_folder(app.instance_path)
    config["SECRET_KEY"] = load_secret(app)
    config.setdefault("SERVICE_NAME", "mlapi")
    database_settings(config, app.instance_path)
    token_settings(config)
    limiter_settings(config)
    cache_settings(config)


def check_instance_folder(folder):
    """The instance folder exists (created if need be) and this user can write in it."""
    fix = (
        "Set MLAPI_INSTANCE_PATH to a folder this user can write "
        f"(uid {os.getuid()}), or fix the folder's owner or mode"
    )
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)  # owner only, like the files in it
    except OSError as exc:
        raise refused(
            "MLAPI_INSTANCE_PATH",
            f"cannot create the instance folder {folder}: {exc.strerror}",
            fix,
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise refused("MLAPI_INSTANCE_PATH", f"the instance folder {folder} is not writable", fix)


# --- the secret ----------------------------------------------------------------------


def load_secret(app):
    """Return the secret for signing tokens, per the rules of the running mode."""
    secret = app.config.get("SECRET_KEY")
    if app.config["ENV"] == "production":
        check_production_secret(secret)
        return str(secret)
    if secret:
        return str(secret)
    try:
        return instance_secret(app.instance_path)
    except OSError as exc:
        raise refused(
            "MLAPI_INSTANCE_PATH",
            f"cannot read or write the generated secret {exc.filename}: {exc.strerror}",
            "Make the file readable by this user, or set MLAPI_SECRET_KEY (or "
            "MLAPI_SECRET_KEY_FILE), or point MLAPI_INSTANCE_PATH at a folder of its own",
        ) from None


def check_production_secret(secret):
    if not secret or len(str(secret).encode()) < MIN_SECRET_BYTES:
        raise refused(
            "MLAPI_SECRET_KEY",
            f"MLAPI_SECRET_KEY must be set to at least {MIN_SECRET_BYTES} bytes when "
            "MLAPI_ENV=production",
            "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))' "
            "and set MLAPI_SECRET_KEY (or MLAPI_SECRET_KEY_FILE)",
        )


def instance_secret(folder):
    """Read the generated secret, creating it (mode 0600) if no process has yet.

    The file is written under a temporary name and linked into place, so
    concurrent workers agree on one secret and none reads a partial file.
    """
    path = os.path.join(folder, "secret_key")
    if not os.path.exists(path):
        os.makedirs(folder, mode=0o700, exist_ok=True)  # owner only, like the files in it
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path) as handle:
        return handle.read().strip()


# --- checks and derived library settings ---------------------------------------------


def check_password_min_length(config):
    """SP 800-63B: never under 8; over 64 would refuse passwords every verifier must take."""
    value = config["PASSWORD_MIN_LENGTH"]
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 64:
        raise refused(
            "MLAPI_PASSWORD_MIN_LENGTH",
            f"MLAPI_PASSWORD_MIN_LENGTH={value!r} must be a whole number from 8 to 64",
            "Set MLAPI_PASSWORD_MIN_LENGTH to a whole number from 8 to 64, or unset it for 8",
        )


# redis-py 8.1 imports these at its own import, guarded, whenever OpenTelemetry is
# installed (mlapi's tracing installs it), only to know whether its optional command
# metrics could be turned on. mlapi never turns them on.
REDIS_OPTIONAL_IMPORTS = ("opentelemetry.metrics", "opentelemetry.sdk.metrics")


def import_redis():
    """redis-py, imported without OpenTelemetry's metrics API and SDK (and psutil through
    the SDK): about 2 MiB per worker. They are hidden only while redis-py loads, so that its
    guarded imports fail; tracing, or anything else, imports them as usual afterwards."""
    if "redis" not in sys.modules:
        hidden = [name for name in REDIS_OPTIONAL_IMPORTS if name not in sys.modules]
        sys.modules.update(dict.fromkeys(hidden))
        try:
            import redis  # noqa: F401
        finally:
            for name in hidden:
                del sys.modules[name]
    return sys.modules["redis"]


def redis_client_options(config):
    """redis-py keyword arguments for every Redis client of the app (the shared one, the
    limiter's, the cache's): a socket timeout on connect and on every read, and at most one
    immediate retry, only for a broken connection (a pooled socket a Redis restart closed).
    redis-py's default retries ten times with back-off: a frozen Redis would cost a request
    seconds instead of one socket timeout."""
    import_redis()
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    timeout = config["REDIS_SOCKET_TIMEOUT"]
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }


def database_url(config, folder):
    url = config.get("DATABASE_URL")
    if url:
        return url.replace("postgres://", "postgresql://", 1)
    return "sqlite:///" + os.path.join(folder, "mlapi.db")


def connect_arguments(url, timeout):
    """psycopg connection parameters that bound every wait on PostgreSQL by about
    ``timeout`` seconds (with mlapi.postgres's client-side deadline, which mlapi.sql adds
    to every connection). SQLite needs none: mlapi.sql gives it ``timeout`` for locks."""
    from mlapi.sql import parse_url

    if parse_url(url).backend != "postgresql":
        return {}
    millis = int(timeout * 1000)
    return {
        # New connections (libpq counts whole seconds, at least 2).
        "connect_timeout": max(2, math.ceil(timeout)),
        # The server ends slow statements and lock waits itself...
        "options": f"-c statement_timeout={millis} -c lock_timeout={min(millis, 2000)}",
        # ...and the kernel drops a connection whose packets go unacknowledged
        # (a network black hole) or whose idle peer vanished.
        "tcp_user_timeout": millis,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }


def database_settings(config, folder):
    url = database_url(config, folder)
    config["DATABASE_URI"] = url
    config.setdefault(
        "DATABASE_CONNECT_ARGS", connect_arguments(url, float(config["DATABASE_TIMEOUT"]))
    )


def access_token_seconds(config):
    """The access token lifetime in whole seconds (MLAPI_ACCESS_TOKEN_MINUTES may be fractional)."""
    return max(1, round(config["ACCESS_TOKEN_MINUTES"] * 60))


def token_settings(config):
    config.setdefault("JWT_SECRET_KEY", config["SECRET_KEY"])
    config["JWT_ALGORITHM"] = "HS256"
    config["JWT_DECODE_ALGORITHMS"] = ["HS256"]
    config["JWT_TOKEN_LOCATION"] = ["headers"]
    # No cookies, so no CSRF claim: a shorter token is cheaper to parse on every request.
    config["JWT_COOKIE_CSRF_PROTECT"] = False
    config.setdefault("JWT_ACCESS_TOKEN_EXPIRES", timedelta(seconds=access_token_seconds(config)))
    config.setdefault("JWT_REFRESH_TOKEN_EXPIRES", config["REFRESH_TOKEN_DAYS"] * 86400)


def limiter_settings(config):
    config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    config.setdefault("RATELIMIT_STRATEGY", config["RATE_LIMIT_STRATEGY"])
    if config.get("REDIS_URL"):
        config.setdefault("RATELIMIT_STORAGE_URI", config["REDIS_URL"])
        # The storage's own prefix starts every key, so MLAPI_REDIS_KEY_PREFIX covers them
        # (flask-limiter's RATELIMIT_KEY_PREFIX only goes inside the storage's "LIMITS:").
        config.setdefault(
            "RATELIMIT_STORAGE_OPTIONS",
            {"key_prefix": config["REDIS_KEY_PREFIX"] + "limits", **redis_client_options(config)},
        )
        config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
        # flask-limiter falls back to memory only for the request that finds Redis failing;
        # a concurrent request (another thread) whose Redis call fails a moment later would
        # be a 500. It passes instead, that once: limits stay in force through the fallback.
        config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    else:
        config.setdefault("RATELIMIT_STORAGE_URI", "memory://")


def cache_settings(config):
    config.setdefault("CACHE_DEFAULT_TIMEOUT", config["CACHE_TIMEOUT"])
    if config.get("REDIS_URL"):
        config.setdefault("CACHE_TYPE", "mlapi.predictions.JSONRedisCache")
        config.setdefault("CACHE_REDIS_URL", config["REDIS_URL"])
        config.setdefault("CACHE_KEY_PREFIX", config["REDIS_KEY_PREFIX"] + "cache:")
        config.setdefault("CACHE_OPTIONS", redis_client_options(config))
    else:
        config.setdefault("CACHE_TYPE", "SimpleCache")
        config.setdefault("CACHE_THRESHOLD", 10_000)
