"""API version 1: the arithmetic mean, of one feature vector or of a batch."""

from flask import Blueprint
from flask_jwt_extended import current_user, jwt_required
from spectree import Response

from mlapi import models
from mlapi.api.root import ERRORS
from mlapi.limits import per_user_predictions
from mlapi.observability import count_prediction
from mlapi.openapi import describe
from mlapi.schemas import PredictBody, V1Response, parse_rows, prediction_fields

bp = Blueprint("v1", __name__, url_prefix="/v1")


def documented_batch(out, tag):
    """Describe an authenticated endpoint that takes one vector or an ``instances`` batch."""
    return describe(
        json=PredictBody, resp=Response(HTTP_200=out, **ERRORS), tags=[tag], security={"bearer": []}
    )


@bp.post("/predict")
@jwt_required()
@per_user_predictions
@documented_batch(V1Response, "v1")
def predict():
    """Version 1 prediction: the average of the features, per row for a batch."""
    rows, batched = parse_rows()
    model, values = models.predict_rows("average", rows)
    count_prediction(model, current_user.username, version="v1", rows=len(rows))
    return {"version": "1.0", **prediction_fields(values, batched), "method": "average"}
