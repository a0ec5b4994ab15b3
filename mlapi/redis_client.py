"""The shared Redis connection (only when MLAPI_REDIS_URL is set)."""

import redis


def init_app(app):
    url = app.config.get("REDIS_URL")
    if not url:
        return
    timeout = app.config["REDIS_SOCKET_TIMEOUT"]
    app.extensions["mlapi.redis"] = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
