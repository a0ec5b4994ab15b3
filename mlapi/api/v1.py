"""API version 1: the arithmetic mean, of one feature vector or of a batch."""

from flask import Blueprint

from mlapi.api.bodies import body, prediction_fields
from mlapi.api.decorators import prediction
from mlapi.api.schemas import PredictBody, V1Response
from mlapi.predictions import predict_rows

bp = Blueprint("v1", __name__, url_prefix="/v1")


@bp.post("/predict")
@prediction(V1Response, tags=("v1",))
@body(PredictBody)
def predict(predict_body):
    """Version 1 prediction: the average of the features, per row for a batch."""
    rows, batched = predict_body
    values = predict_rows("average", rows, version="v1")
    return {"version": "1.0", **prediction_fields(values, batched), "method": "average"}
