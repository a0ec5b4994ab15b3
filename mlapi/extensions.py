"""Unbound Flask extensions, bound to the app in ``create_app``."""

from flask_caching import Cache
from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_sqlalchemy import SQLAlchemy
from spectree import SecurityScheme, SpecTree
from spectree.models import SecureType, SecuritySchemeData

from mlapi.schemas import Problem

db = SQLAlchemy()
jwt = JWTManager()
cache = Cache()
# Keys on the connecting address; ProxyFix rewrites it when proxies are trusted.
limiter = Limiter(key_func=get_remote_address)
spec = SpecTree(
    "flask",
    title="mlapi",
    description="Machine learning predictions over HTTP, with JWT authentication.",
    version="1.0.0",
    path="docs",
    security_schemes=[
        # spectree 3.0 keeps a dict given as data unconverted, and /openapi.json then fails.
        SecurityScheme(
            name="bearer",
            data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer", bearer_format="JWT"),
        )
    ],
    annotations=False,
    naming_strategy=lambda model: model.__name__,
    validation_error_model=Problem,
    # mlapi serves its own offline Swagger UI and ReDoc pages (mlapi.openapi).
    page_templates={},
)
