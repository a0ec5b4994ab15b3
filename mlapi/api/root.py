"""The tutorial's unversioned endpoints."""

from flask import Blueprint, current_app
from flask_jwt_extended import current_user, jwt_required
from spectree import Response

from mlapi import caching, models
from mlapi.auth import admin_required
from mlapi.extensions import limiter
from mlapi.limits import by_address, by_user, config_limit, per_user_predictions, remaining
from mlapi.observability import count_prediction
from mlapi.openapi import describe
from mlapi.schemas import (
    CachedPrediction,
    CustomLimitPrediction,
    Features,
    Message,
    Prediction,
    Problem,
    ServiceIndex,
    UserPrediction,
    parse,
)

bp = Blueprint("api", __name__)

ERRORS = {f"HTTP_{code}": Problem for code in (400, 401, 413, 415, 422, 429)}


def documented(out, tags=("predict",), **errors):
    """Describe an authenticated JSON endpoint in the OpenAPI document."""
    return describe(
        json=Features,
        resp=Response(HTTP_200=out, **ERRORS, **errors),
        tags=list(tags),
        security={"bearer": []},
    )


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
@jwt_required()
@per_user_predictions
@documented(UserPrediction)
def predict():
    """Mean of the features, with the authenticated user's name."""
    features = parse(Features).root
    model, value = models.predict_one("average", features)
    count_prediction(model, current_user.username)
    return {"prediction": value, "user": current_user.username}


@bp.post("/predict-limited")
@jwt_required()
@limiter.limit(config_limit("PREDICT_LIMITED_RATE_LIMIT"), key_func=by_address)
@per_user_predictions
@documented(Prediction)
def predict_limited():
    """Mean of the features; also limited per client address."""
    model, value = models.predict_one("average", parse(Features).root)
    count_prediction(model, current_user.username)
    return {"prediction": value}


@bp.post("/predict-custom-limit")
@jwt_required()
@limiter.limit(config_limit("CUSTOM_RATE_LIMIT"), key_func=by_user)
@per_user_predictions
@documented(CustomLimitPrediction)
def predict_custom_limit():
    """Mean of the features, limited per user; reports the requests left in the window."""
    model, value = models.predict_one("average", parse(Features).root)
    count_prediction(model, current_user.username)
    return {"prediction": value, "rate_limit_remaining": remaining("CUSTOM_RATE_LIMIT")}


@bp.post("/predict-cached")
@jwt_required()
@per_user_predictions
@documented(CachedPrediction)
def predict_cached():
    """Mean of the features, cached per feature vector for MLAPI_CACHE_TIMEOUT seconds."""
    model, value, cached = caching.cached_predict("average", parse(Features).root)
    count_prediction(model, current_user.username)
    return {"prediction": value, "user": current_user.username, "cached": cached}


@bp.delete("/cache/invalidate")
@jwt_required()
@admin_required
@documented(Message, tags=("cache",), HTTP_403=Problem)
def invalidate_cache():
    """Drop the cached prediction for this feature vector (admin only)."""
    caching.invalidate("average", parse(Features).root)
    return {"message": "Cache invalidated"}
