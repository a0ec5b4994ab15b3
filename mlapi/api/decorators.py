"""What the prediction views share: the per-user prediction limit, and one decorator that
makes a view an authenticated, limited and documented prediction endpoint."""

from functools import wraps

from mlapi import context
from mlapi.api.bodies import batch_cost
from mlapi.api.docs import Response, describe
from mlapi.api.schemas import Problem
from mlapi.auth import recheck, token_required
from mlapi.budget import budget

PROBLEMS = {f"HTTP_{code}": Problem for code in (400, 401, 413, 415, 422, 429)}


def per_user_predictions(view=None, *, cache_lookup=None, own_headers=True):
    """Spend the user's prediction budget (mlapi/budget.py) before the view runs.

    Every authenticated prediction endpoint shares one per-user budget. A batch costs
    one request, or its number of rows when MLAPI_BATCH_COUNTS_ROWS is true.
    ``cache_lookup()``, when given, names the cached prediction read in the same round
    trip (a :class:`mlapi.serving.cache.Lookup`, or None), which the view receives as its
    ``cache_lookup`` argument.
    ``own_headers`` is false when the view has flask-limiter limits of its own, whose
    headers the response then carries.
    """
    if view is None:
        return lambda view: per_user_predictions(
            view, cache_lookup=cache_lookup, own_headers=own_headers
        )

    @wraps(view)
    def wrapper(*args, **kwargs):
        stamp = context.request_g().get("identity_stamp")
        if cache_lookup is None:
            budget().spend(batch_cost(), stamp, recheck, None, own_headers)
            return view(*args, **kwargs)
        lookup = cache_lookup()
        budget().spend(batch_cost(), stamp, recheck, lookup, own_headers)
        return view(*args, cache_lookup=lookup, **kwargs)

    # Tells the token check that this view verifies the identity generation itself.
    wrapper.checks_identity_generation = True
    return wrapper


def prediction(out, tags=("predict",), limits=(), cache_lookup=None):
    """A bearer token, then ``limits`` (extra limiter decorators), then the per-user
    prediction limit; documented with response ``out`` and the body named by ``@body``."""

    def decorate(view):
        view = describe(
            resp=Response(HTTP_200=out, **PROBLEMS),
            tags=list(tags),
            security={"bearer": []},
        )(view)
        view = per_user_predictions(view, cache_lookup=cache_lookup, own_headers=not limits)
        for limit in reversed(limits):
            view = limit(view)
        return token_required(view)

    return decorate
