"""API version 2: the weighted mean, of one feature vector or of a batch, and a monitored
prediction."""

from flask import Blueprint
from flask_jwt_extended import current_user, jwt_required

from mlapi import models
from mlapi.api.root import documented
from mlapi.api.v1 import documented_batch
from mlapi.limits import per_user_predictions
from mlapi.observability import count_prediction
from mlapi.schemas import Features, Prediction, V2Response, parse, parse_rows, prediction_fields

bp = Blueprint("v2", __name__, url_prefix="/v2")


@bp.post("/predict")
@jwt_required()
@per_user_predictions
@documented_batch(V2Response, "v2")
def predict():
    """Version 2 prediction: weighted mean with weights [1.0, 1.5, 2.0, 0.5] (up to 4 features)."""
    rows, batched = parse_rows()
    model, values = models.predict_rows("weighted_average", rows)
    count_prediction(model, current_user.username, version="v2", rows=len(rows))
    return {
        "version": "2.0",
        **prediction_fields(values, batched),
        "method": "weighted_average",
        "weights": models.weights_for(len(rows[0])),
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
