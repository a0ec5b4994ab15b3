"""mlapi configuration: the one place that reads settings.

Defaults live in these classes; every key can be overridden by an environment
variable of the same name prefixed with ``MLAPI_`` (``MLAPI_PREDICT_RATE_LIMIT``
sets ``PREDICT_RATE_LIMIT``). Values are parsed as JSON when they parse, so
``MLAPI_MAX_FEATURES=500`` is an int and ``MLAPI_METRICS_PER_USER=true`` a bool.

:func:`configure` applies them to an app, checks them, loads the secret, and derives
the settings of the libraries (``SQLALCHEMY_*``, ``JWT_*``, ``RATELIMIT_*``,
``CACHE_*``) from them; a library key set explicitly wins over the derived one.
"""

import math
import os
import secrets
from datetime import timedelta

import sqlalchemy as sa
from limits import parse_many

MIN_SECRET_BYTES = 32
LIMIT_KEYS = (
    "PREDICT_RATE_LIMIT",
    "PUBLIC_RATE_LIMIT",
    "PREDICT_LIMITED_RATE_LIMIT",
    "CUSTOM_RATE_LIMIT",
    "LOGIN_RATE_LIMIT",
)


class Config:
    # Mode: "development" or "production". Production refuses unsafe settings.
    ENV = "development"

    # Secrets. In production MLAPI_SECRET_KEY (>= 32 bytes) is required; outside
    # production a random key is generated once into the instance folder.
    SECRET_KEY = None

    # Storage. SQLite under the instance folder unless a SQLAlchemy URL is given.
    DATABASE_URL = None
    # Seconds any one database wait may take: a PostgreSQL statement (ended by the server)
    # and every answer from it (a client-side deadline, for a frozen server), a free pooled
    # connection, and SQLite's wait for a lock. New PostgreSQL connections: at least 2 s.
    DATABASE_TIMEOUT = 2.0
    # Redis for shared limits, cache and token revocation. Unset: in-process stores.
    REDIS_URL = None
    REDIS_SOCKET_TIMEOUT = 0.25
    # After a Redis failure, skip it (using fallbacks) for this many seconds.
    REDIS_RETRY_SECONDS = 2.0
    REDIS_KEY_PREFIX = "mlapi:"

    # Tokens and passwords.
    ACCESS_TOKEN_MINUTES = 30
    REFRESH_TOKEN_DAYS = 7
    # werkzeug hash method; stored hashes made with other parameters are upgraded at login.
    PASSWORD_HASH_METHOD = "scrypt:32768:8:1"
    # Shortest password accepted (NIST SP 800-63B: at least 8; 15 where a password is the
    # only factor, as here, under its 2025 revision). Longest: 128. See docs/operations.md.
    PASSWORD_MIN_LENGTH = 8

    # Browsers: origins allowed to call the API cross-origin (CORS), e.g.
    # MLAPI_CORS_ORIGINS='["https://app.example.com"]'. Empty: no CORS headers at all.
    CORS_ORIGINS = []

    # Request limits.
    MAX_CONTENT_LENGTH = 1024 * 1024
    MAX_FEATURES = 10_000
    MAX_BATCH = 1_000
    # A batch costs the per-user prediction limit one request, or its number of rows if true.
    BATCH_COUNTS_ROWS = False

    # Rate limits (flask-limiter notation, e.g. "10/minute", "100 per hour").
    PREDICT_RATE_LIMIT = "600/minute"
    PUBLIC_RATE_LIMIT = "5/minute"
    PREDICT_LIMITED_RATE_LIMIT = "10/minute"
    CUSTOM_RATE_LIMIT = "100/minute"
    LOGIN_RATE_LIMIT = "10/minute"
    RATE_LIMIT_STRATEGY = "moving-window"
    # Number of reverse proxies in front of the service whose X-Forwarded-For is trusted.
    TRUSTED_PROXIES = 0

    # Prediction cache.
    CACHE_TIMEOUT = 300

    # Models: a model repository (<name>/<version>/<file>, and flat .json/.npz files) loaded
    # at start (optional); see docs/models.md.
    MODEL_DIR = None
    # Each worker rescans MODEL_DIR this often and serves what changed; 0 turns polling off.
    MODEL_POLL_SECONDS = 5.0
    # Intra-op threads per ONNX session: one per worker keeps N workers off each other's cores.
    ONNX_THREADS = 1

    # Observability.
    LOG_LEVEL = "INFO"
    METRICS_PER_USER = False
    ACTIVE_USER_WINDOW_SECONDS = 300

    # Readiness: seconds each dependency check may take.
    READY_CHECK_TIMEOUT = 0.5
    # The checks that must pass for /health/ready to be 200 (models, database, redis).
    # Any other failing check reports "degraded" and keeps the instance ready.
    READY_REQUIRES = "database,models"


class TestingConfig(Config):
    TESTING = True
    ENV = "testing"
    SECRET_KEY = "test-secret-key-that-is-at-least-32-bytes-long"
    DATABASE_URL = "sqlite://"
    # Cheap hashes keep the suite fast; tests of the scrypt default set it back.
    PASSWORD_HASH_METHOD = "pbkdf2:sha256:1000"


class ConfigurationError(RuntimeError):
    """The configuration is unsafe or incomplete; the service refuses to start."""


def instance_path():
    """The instance folder given by MLAPI_INSTANCE_PATH, or None for Flask's default."""
    return os.environ.get("MLAPI_INSTANCE_PATH")


def configure(app, overrides=None):
    """Defaults, then ``MLAPI_*`` environment variables, then ``overrides`` (a dict or an
    object with upper-case attributes); then checks, the secret and the library keys."""
    config = app.config
    config.from_object(Config)
    config.from_prefixed_env("MLAPI")
    if isinstance(overrides, dict):
        config.from_mapping(overrides)
    elif overrides is not None:
        config.from_object(overrides)
    check_limits(config)
    check_password_min_length(config)
    config["SECRET_KEY"] = load_secret(app)
    config.setdefault("SERVICE_NAME", "mlapi")
    database_settings(config, app.instance_path)
    token_settings(config)
    limiter_settings(config)
    cache_settings(config)


# --- the secret ----------------------------------------------------------------------


def load_secret(app):
    """Return the secret for signing tokens, per the rules of the running mode."""
    secret = app.config.get("SECRET_KEY")
    if app.config["ENV"] == "production":
        if not secret or len(str(secret).encode()) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"MLAPI_SECRET_KEY must be set to at least {MIN_SECRET_BYTES} bytes when "
                "MLAPI_ENV=production (generate one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(48))')."
            )
        return str(secret)
    if secret:
        return str(secret)
    return instance_secret(app.instance_path)


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


def check_limits(config):
    """Refuse to start with a limit string flask-limiter would silently skip at request time."""
    for key in LIMIT_KEYS:
        try:
            parse_many(config[key])
        except ValueError:
            raise ValueError(
                f"MLAPI_{key}={config[key]!r} is not a rate limit like '10/minute'"
            ) from None


def check_password_min_length(config):
    """SP 800-63B: never under 8; over 64 would refuse passwords every verifier must take."""
    value = config["PASSWORD_MIN_LENGTH"]
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 64:
        raise ValueError(f"MLAPI_PASSWORD_MIN_LENGTH={value!r} must be a whole number from 8 to 64")


def redis_client_options(config):
    """redis-py keyword arguments for every Redis client of the app (the shared one, the
    limiter's, the cache's): a socket timeout on connect and on every read, and at most one
    immediate retry, only for a broken connection (a pooled socket a Redis restart closed).
    redis-py's default retries ten times with back-off: a frozen Redis would cost a request
    seconds instead of one socket timeout."""
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


def engine_options(url, timeout):
    """Engine settings that bound every wait on the database by about ``timeout`` seconds
    (with mlapi.postgres's client-side deadline, which database.init_app adds)."""
    backend = sa.engine.make_url(url).get_backend_name()
    if backend == "postgresql":
        millis = int(timeout * 1000)
        return {
            "pool_pre_ping": True,
            # Waiting for a free pooled connection.
            "pool_timeout": timeout,
            "connect_args": {
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
            },
        }
    if backend == "sqlite":
        # A locked database answers 503 after this many seconds instead of hanging.
        return {"connect_args": {"timeout": timeout}}
    return {"pool_pre_ping": True, "pool_timeout": timeout}


def database_settings(config, folder):
    url = database_url(config, folder)
    config["SQLALCHEMY_DATABASE_URI"] = url
    config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS", engine_options(url, float(config["DATABASE_TIMEOUT"]))
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
