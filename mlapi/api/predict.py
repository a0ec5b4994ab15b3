"""The tutorial's unversioned endpoints."""

from flask import Blueprint, current_app

from mlapi import context
from mlapi.api.bodies import body, read
from mlapi.api.decorators import PROBLEMS, prediction
from mlapi.api.docs import Response, describe
from mlapi.api.schemas import (
    CachedPrediction,
    CustomLimitPrediction,
    Features,
    Message,
    Prediction,
    Problem,
    ServiceIndex,
    UserPrediction,
)
from mlapi.auth import admin_required, current_username, token_required
from mlapi.extensions import limiter
from mlapi.limits import by_address, by_user, config_limit, remaining
from mlapi.observability.metrics import count_prediction
from mlapi.predictions import predict_one, prediction_cache, registry
from mlapi.serving.cache import Lookup, cache_key

bp = Blueprint("api", __name__)


@bp.get("/")
@describe(resp=Response(HTTP_200=ServiceIndex), tags=["service"])
def index():
    """The service's name, API versions and their prediction endpoints."""
    return {
        "service": current_app.config["SERVICE_NAME"],
        "versions": ["v1", "v2"],
        "endpoints": {"v1": "/v1/predict", "v2": "/v2/predict"},
    }


@bp.get("/public")
@limiter.limit(config_limit("PUBLIC_RATE_LIMIT"), key_func=by_address)
@describe(resp=Response(HTTP_200=Message, HTTP_429=Problem), tags=["service"])
def public():
    """An unauthenticated endpoint, rate limited per client address."""
    limit = current_app.config["PUBLIC_RATE_LIMIT"]
    return {"message": f"This endpoint is rate limited to {limit} per client address"}


@bp.post("/predict")
@prediction(UserPrediction)
@body(Features)
def predict(features):
    """Mean of the features, with the authenticated user's name."""
    return {"prediction": predict_one("average", features), "user": current_username()}


@bp.post("/predict-limited")
@prediction(
    Prediction,
    limits=[limiter.limit(config_limit("PREDICT_LIMITED_RATE_LIMIT"), key_func=by_address)],
)
@body(Features)
def predict_limited(features):
    """Mean of the features; also limited per client address."""
    return {"prediction": predict_one("average", features)}


@bp.post("/predict-custom-limit")
@prediction(
    CustomLimitPrediction,
    limits=[limiter.limit(config_limit("CUSTOM_RATE_LIMIT"), key_func=by_user)],
)
@body(Features)
def predict_custom_limit(features):
    """Mean of the features, limited per user; reports the requests left in the window."""
    return {
        "prediction": predict_one("average", features),
        "rate_limit_remaining": remaining("CUSTOM_RATE_LIMIT"),
    }


def cached_model():
    """The model /predict-cached serves: ``?model=<name>``, by default ``average``."""
    req = context.current_request()
    if not req.query_string:  # the common request: no query string to parse
        return "average"
    return req.args.get("model", "average")


def cached_prediction_lookup():
    """The cache lookup of this body's features (model and key), whose value the budget's
    round trip reads, and which the view receives; None if the body or model is invalid
    (the view then answers, after the limit, as on every view)."""
    try:
        model = registry().get(cached_model())
        return Lookup(model, cache_key(model, read(Features)))
    except Exception:
        return None


@bp.post("/predict-cached")
@prediction(CachedPrediction, cache_lookup=cached_prediction_lookup)
@body(Features)
def predict_cached(features, cache_lookup=None):
    """A model's prediction (``?model=<name>``, default ``average``: the mean), cached
    per model version and feature vector for MLAPI_CACHE_TIMEOUT seconds."""
    name = cached_model() if cache_lookup is None else cache_lookup.model.name
    model, value, cached = prediction_cache().predict(name, features, cache_lookup)
    count_prediction(model)
    return {"prediction": value, "user": current_username(), "cached": cached}


@bp.delete("/cache/invalidate")
@token_required
@admin_required
@describe(
    resp=Response(HTTP_200=Message, **PROBLEMS, HTTP_403=Problem),
    tags=["cache"],
    security={"bearer": []},
)
@body(Features)
def invalidate_cache(features):
    """Drop the cached prediction for this feature vector (admin only)."""
    prediction_cache().invalidate("average", features)
    return {"message": "Cache invalidated"}
