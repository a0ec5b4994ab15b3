"""What can go wrong while serving predictions, without any HTTP status attached."""

from config import ConfigurationError


class PredictionError(Exception):
    """A model cannot compute a prediction for this input (a client's input, not a fault).

    ``errors`` are ``{pointer, detail, type}`` items, one per offending part of the input.
    """

    def __init__(self, detail, errors=()):
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)


class ModelNotFound(KeyError):
    """No model of this name (or version) is loaded."""


class ModelLoadError(ConfigurationError):
    """A model file cannot be loaded; the message names the file."""


class TensorError(ValueError):
    """An input tensor cannot be read as the batch a model takes."""


def error_item(pointer, detail, kind):
    """One ``{pointer, detail, type}`` item of an error list."""
    return {"pointer": pointer, "detail": detail, "type": kind}
