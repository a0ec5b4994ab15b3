"""mlapi configuration.

Defaults live in these classes; every key can be overridden by an environment
variable of the same name prefixed with ``MLAPI_`` (``MLAPI_PREDICT_RATE_LIMIT``
sets ``PREDICT_RATE_LIMIT``). Values are parsed as JSON when they parse, so
``MLAPI_MAX_FEATURES=500`` is an int and ``MLAPI_METRICS_PER_USER=true`` a bool.
"""


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

    # Models: a folder of model files (.json, .npz) loaded at start (optional); see docs/models.md.
    MODEL_DIR = None

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
