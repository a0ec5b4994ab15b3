"""API version 1: the arithmetic mean."""

from flask import Blueprint
from flask_jwt_extended import current_user, jwt_required

from mlapi import models
from mlapi.api.root import documented
from mlapi.limits import per_user_predictions
from mlapi.observability import count_prediction
from mlapi.schemas import Features, V1Prediction, parse

bp = Blueprint("v1", __name__, url_prefix="/v1")


@bp.post("/predict")
@jwt_required()
@per_user_predictions
@documented(V1Prediction, tags=("v1",))
def predict():
    """Version 1 prediction: the average of the features."""
    model, value = models.predict_one("average", parse(Features).root)
    count_prediction(model, current_user.username, version="v1")
    return {"version": "1.0", "prediction": value, "method": "average"}
