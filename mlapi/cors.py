"""Cross-origin requests from browsers (CORS), off unless MLAPI_CORS_ORIGINS lists origins.

flask-cors answers preflights and adds the headers to every response, problem
responses included; an origin not on the list gets no ``Access-Control-*`` header,
so the browser refuses to hand the response to the page. Tokens travel in the
Authorization header, never in cookies, so credentials mode stays off.
"""

from flask_cors import CORS

ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-Request-ID"]
# Headers a page may read: the rate-limit state, the request id, and auth challenges.
EXPOSED_HEADERS = [
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "X-Request-ID",
    "WWW-Authenticate",
]
PREFLIGHT_MAX_AGE = 600


def init_app(app):
    # A list of checked origins: config.py parsed MLAPI_CORS_ORIGINS at start.
    origins = app.config["CORS_ORIGINS"]
    if not origins:
        return
    CORS(
        app,
        origins=origins,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=PREFLIGHT_MAX_AGE,
        supports_credentials=False,
        # Without an Origin header a request is not cross-origin: send nothing, and
        # do not list the allowed origins to whoever asks.
        always_send=False,
    )
