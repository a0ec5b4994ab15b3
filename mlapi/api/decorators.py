"""What the prediction views share: the per-user prediction limit, and one decorator that
makes a view an authenticated, limited and documented prediction endpoint."""

from flask_jwt_extended import jwt_required
from spectree import Response

from mlapi.api.bodies import batch_cost
from mlapi.api.docs import describe
from mlapi.api.schemas import Problem
from mlapi.extensions import limiter
from mlapi.limits import by_user, config_limit

PROBLEMS = {f"HTTP_{code}": Problem for code in (400, 401, 413, 415, 422, 429)}

# Every authenticated prediction endpoint shares one per-user budget. A batch costs
# one request, or its number of rows when MLAPI_BATCH_COUNTS_ROWS is true.
per_user_predictions = limiter.shared_limit(
    config_limit("PREDICT_RATE_LIMIT"), scope="predictions", key_func=by_user, cost=batch_cost
)


def prediction(out, tags=("predict",), limits=()):
    """A bearer token, then ``limits`` (extra limiter decorators), then the per-user
    prediction limit; documented with response ``out`` and the body named by ``@body``."""

    def decorate(view):
        view = describe(
            resp=Response(HTTP_200=out, **PROBLEMS),
            tags=list(tags),
            security={"bearer": []},
        )(view)
        view = per_user_predictions(view)
        for limit in reversed(limits):
            view = limit(view)
        return jwt_required()(view)

    return decorate
