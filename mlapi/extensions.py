"""Unbound Flask extensions, bound to the app in ``create_app``; imports nothing from mlapi."""

from flask_caching import Cache
from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
jwt = JWTManager()
cache = Cache()
# Keys on the connecting address; ProxyFix rewrites it when proxies are trusted.
limiter = Limiter(key_func=get_remote_address)
