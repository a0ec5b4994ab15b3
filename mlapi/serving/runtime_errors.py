"""Errors raised by the model runtimes, the binary tensor codec and the repository scan.

They carry a message written for the client or the operator and nothing else; the
web layer maps them to responses (a :class:`TensorError` is a 400 ``{"error": ...}``).
"""


class TensorError(ValueError):
    """A request's tensor is malformed, or does not fit what the model declares."""


class ModelFileError(Exception):
    """A model file or folder cannot be loaded; the message names it and says why."""


class ModelConfigError(ModelFileError):
    """A model's ``config.json`` is invalid; the message names the file and the field."""


class InferenceError(Exception):
    """The runtime refused to compute a prediction for inputs that passed validation.

    The message is for the client; ``detail`` holds the runtime's own words (source
    file names and line numbers included), for the log only.
    """

    def __init__(self, message, detail=None):
        super().__init__(message)
        self.detail = detail
