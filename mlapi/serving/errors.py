"""What can go wrong while serving predictions, without any HTTP status attached.

One hierarchy for the whole serving package: the model runtimes, the tensor codecs,
the repository scan and the registry raise these, and ``mlapi/errors.py`` maps each
to a response (``{"error": ...}`` on the Open Inference Protocol routes).
"""

from config import ConfigurationError


class ServingError(Exception):
    """Base of every error the serving package raises on purpose."""


class PredictionError(ServingError):
    """A model cannot compute a prediction for this input (a client's input, not a fault).

    ``errors`` are ``{pointer, detail, type}`` items, one per offending part of the input.
    """

    def __init__(self, detail, errors=()):
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)


class CacheUnavailable(Exception):
    """The prediction cache's store failed where no fallback is honest (an invalidation)."""


class TensorError(PredictionError, ValueError):
    """A request's tensor is malformed, or does not fit what the model declares."""

    def __init__(self, detail):
        super().__init__(detail)


class InferenceError(PredictionError):
    """The runtime refused to compute a prediction for inputs that passed validation.

    The message is for the client; ``log_detail`` holds the runtime's own words (source
    file names and line numbers included), for the log only.
    """

    def __init__(self, detail, log_detail=None):
        super().__init__(detail)
        self.log_detail = log_detail


class ModelNotFound(ServingError, KeyError):
    """No model of this name (or version) is loaded."""


class ModelLoadError(ServingError, ConfigurationError):
    """A model file or folder cannot be loaded; the message names it and says why."""


class ModelConfigError(ModelLoadError):
    """A model's ``config.json`` is invalid; the message names the file and the field."""


def error_item(pointer, detail, kind):
    """One ``{pointer, detail, type}`` item of an error list."""
    return {"pointer": pointer, "detail": detail, "type": kind}
