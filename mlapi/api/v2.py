"""API version 2: the weighted mean, and a monitored prediction."""

from flask import Blueprint
from flask_jwt_extended import current_user, jwt_required

from mlapi import models
from mlapi.api.root import documented
from mlapi.limits import per_user_predictions
from mlapi.observability import count_prediction
from mlapi.schemas import Features, Prediction, V2Prediction, parse

bp = Blueprint("v2", __name__, url_prefix="/v2")


@bp.post("/predict")
@jwt_required()
@per_user_predictions
@documented(V2Prediction, tags=("v2",))
def predict():
    """Version 2 prediction: weighted mean with weights [1.0, 1.5, 2.0, 0.5] (up to 4 features)."""
    features = parse(Features).root
    model, value = models.predict_one("weighted_average", features)
    count_prediction(model, current_user.username, version="v2")
    return {
        "version": "2.0",
        "prediction": value,
        "method": "weighted_average",
        "weights": models.weights_for(len(features)),
    }


@bp.post("/predict-monitored")
@jwt_required()
@per_user_predictions
@documented(Prediction, tags=("v2",))
def predict_monitored():
    """Mean of the features, counted in predictions_total{version="v2"}."""
    model, value = models.predict_one("average", parse(Features).root)
    count_prediction(model, current_user.username, version="v2")
    return {"prediction": value}
