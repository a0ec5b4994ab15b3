"""API version 2: the weighted mean, of one feature vector or of a batch, and a monitored
prediction."""

from flask import Blueprint

from mlapi.api.bodies import body, prediction_fields
from mlapi.api.decorators import prediction
from mlapi.api.schemas import Features, PredictBody, Prediction, V2Response
from mlapi.predictions import predict_one, predict_rows
from mlapi.serving.models import weights_for

bp = Blueprint("v2", __name__, url_prefix="/v2")


@bp.post("/predict")
@prediction(V2Response, tags=("v2",))
@body(PredictBody)
def predict(predict_body):
    """Version 2 prediction: weighted mean with weights [1.0, 1.5, 2.0, 0.5] (up to 4 features)."""
    rows, batched = predict_body
    values = predict_rows("weighted_average", rows, version="v2")
    return {
        "version": "2.0",
        **prediction_fields(values, batched),
        "method": "weighted_average",
        "weights": weights_for(len(rows[0])),
    }


@bp.post("/predict-monitored")
@prediction(Prediction, tags=("v2",))
@body(Features)
def predict_monitored(features):
    """Mean of the features, counted in predictions_total{version="v2"}."""
    return {"prediction": predict_one("average", features, version="v2")}
