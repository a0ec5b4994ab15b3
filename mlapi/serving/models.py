"""Models: a model maps a 2-D float64 batch (rows x features) to one finite float per row.

The math of the built-in models and of the linear and logistic models read from files
(mlapi/serving/loading.py) lives here; every prediction goes through :meth:`Model.predict`.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from pydantic import Field

from mlapi.serving.errors import PredictionError, TensorError, error_item

V2_WEIGHTS = (1.0, 1.5, 2.0, 0.5)

# A JSON number that is finite: no booleans, numeric strings, NaN or Infinity.
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


@dataclass(frozen=True)
class Tensor:
    """A declared model input or output: ``-1`` in ``shape`` is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    feature_names: tuple[str, ...] | None = None

    def metadata(self):
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def describe(self):
        """One line for people: ``features FP64 [-1, 3] (age, income, tenure)``."""
        names = f" ({', '.join(self.feature_names)})" if self.feature_names else ""
        return f"{self.name} {self.datatype} {list(self.shape)}{names}"


ANY_FEATURES = Tensor("features", "FP64", (-1, -1))
ONE_PER_ROW = Tensor("prediction", "FP64", (-1,))


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    description: str
    predict_fn: Callable[[np.ndarray], np.ndarray]
    max_features: int | None = None
    metadata: dict = field(default_factory=dict)
    input_tensor: Tensor = ANY_FEATURES
    output_tensor: Tensor = ONE_PER_ROW
    kind: str = "builtin"
    source: str = "built-in"
    # Rows per request, from the model's config.json (None: only MLAPI_MAX_BATCH applies).
    max_batch_size: int | None = None
    # The file's own input name, accepted too where config.json names the input otherwise.
    input_alias: str | None = None
    # One row (a list of floats) to its value in plain Python, with the bits ``predict_fn``
    # gives it; None where that function must take the row (see :meth:`predict_row`).
    row_fn: Callable[[list], float | None] | None = None
    platform = "numpy"

    @property
    def inputs(self):
        return (self.input_tensor,)

    @property
    def outputs(self):
        return (self.output_tensor,)

    def infer(self, inputs):
        """The Open Inference Protocol's form: one numeric tensor in, ``{output: values}`` out.

        The tensor is ``[batch, features]`` or ``[features]`` (one row), of any numeric
        datatype, read as float64.
        """
        expected = self.input_tensor.name
        if self.input_alias is not None and list(inputs) == [self.input_alias]:
            inputs = {expected: inputs[self.input_alias]}
        if list(inputs) != [expected]:
            raise TensorError(
                f"Model {self.name!r} takes one input, {expected!r}; got {list(inputs)}."
            )
        array = inputs[expected]
        if array.dtype.kind not in "iuf":
            raise TensorError(f"Input {expected!r} must hold numbers, not {array.dtype.name}.")
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or 0 in array.shape:
            raise TensorError(
                f"Input {expected!r} must have shape [batch, features] or [features] with "
                f"at least one value, got {list(inputs[expected].shape)}."
            )
        batch = array.astype(np.float64)
        if not np.isfinite(batch).all():
            raise TensorError(f"Input {expected!r} must be finite: no NaN or Infinity.")
        return {self.output_tensor.name: self.predict(batch)}

    @property
    def n_features(self):
        """The exact number of features the model takes, or None when it varies."""
        width = self.input_tensor.shape[-1]
        return None if width == -1 else width

    def predict_row(self, row):
        """The value of one row of floats without building an array, or None: then
        :meth:`predict` takes the row (as a batch of one) and says what is wrong with it.

        A single row is the common request, and numpy's per-call overhead costs more than
        the arithmetic of a small model. Only a finite value in bounds comes back here.
        """
        if self.row_fn is None or self._width_problem(len(row)) is not None:
            return None
        return self.row_fn(row)

    def _width_problem(self, width):
        """The 422 for rows of ``width`` features if this model cannot take them, else None."""
        if self.n_features is not None and width != self.n_features:
            return feature_count_problem(self.name, width, exactly=self.n_features)
        if self.max_features is not None and width > self.max_features:
            return feature_count_problem(self.name, width, at_most=self.max_features)
        return None

    def predict(self, batch):
        """Predict one value per row of ``batch``; every value is finite, or PredictionError."""
        problem = self._width_problem(batch.shape[1])
        if problem is not None:
            raise problem
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.asarray(self.predict_fn(batch), dtype=np.float64)
        if values.shape != (batch.shape[0],):
            raise RuntimeError(
                f"model {self.name}:{self.version} returned shape {values.shape} "
                f"for a batch of {batch.shape[0]} rows"
            )
        if np.isfinite(values).all():
            return values
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise PredictionError(
                f"Model {self.name!r} cannot compute a finite prediction for "
                f"{'this input' if batch.shape[0] == 1 else f'row {bad[0]}'}: "
                "the result overflows the range of a float.",
                [
                    error_item("/", f"row {row}: prediction overflows", "overflow")
                    for row in bad[:100].tolist()
                ],
            )
        return values


def feature_count_problem(name, width, exactly=None, at_most=None):
    """The 422 for a row of ``width`` features that model ``name`` cannot take."""
    bound = f"exactly {exactly}" if exactly is not None else f"at most {at_most}"
    kind = "too_short" if exactly is not None and width < exactly else "too_long"
    return PredictionError(
        f"Model {name!r} accepts {bound} features, got {width}.",
        [error_item("/", f"{bound} items", kind)],
    )


def safe_average(batch, weights=None):
    """Row-wise (weighted) mean that never overflows for finite input.

    A naive sum of large finite values overflows to infinity; rows where that
    happens are recomputed scaled by their largest magnitude, which bounds the
    result by that magnitude.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        out = _average(batch, weights)
        bad = ~np.isfinite(out)
        if bad.any():
            rows = batch[bad]
            scale = np.max(np.abs(rows), axis=1)
            out[bad] = _average(rows / scale[:, None], weights) * scale
    return out


def _average(batch, weights):
    """``np.average`` along rows; without weights, its own sum-then-divide (``mean``'s, the
    same bits) without the checks of its Python layer, which cost more than the sum."""
    if weights is None:
        return np.add.reduce(batch, axis=1) / batch.shape[1]
    return np.average(batch, axis=1, weights=weights)


def row_average(row):
    """The mean of one short row, the same bits as :func:`safe_average` gives it; None for a
    row of 8 or more values, or a sum that overflows (the batch path handles both).

    Below 8 values numpy's pairwise summation adds left to right from 0.0, as this loop
    does (tests/unit/test_models.py compares the two on adversarial rows).
    """
    if len(row) >= 8:
        return None
    total = 0.0
    for value in row:
        total += value
    mean = total / len(row)
    return mean if -math.inf < mean < math.inf else None


def weights_for(n_features):
    """The v2 weights, cut to the number of features."""
    return list(V2_WEIGHTS[:n_features])


def weighted_average(batch):
    return safe_average(batch, weights=weights_for(batch.shape[1]))


def linear(batch, weights, bias):
    """``x . w + b`` per row.

    An element-wise product summed along each row, not a matrix product: BLAS
    sums in an order that depends on the batch size, so a row would not get
    the same bits alone and in a batch. Overflow gives inf, which
    :meth:`Model.predict` refuses.
    """
    return np.sum(batch * weights, axis=1) + bias


def sigmoid(z):
    """The logistic function without overflow: exp only ever sees a non-positive number."""
    out = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    ez = np.exp(z[~positive])
    out[~positive] = ez / (1.0 + ez)
    return out


BUILTINS = (
    Model(
        "average",
        "1.0",
        "Arithmetic mean of the features (the v1 method).",
        safe_average,
        row_fn=row_average,
    ),
    Model(
        "weighted_average",
        "2.0",
        "Mean weighted by [1.0, 1.5, 2.0, 0.5] cut to the number of features (the v2 method).",
        weighted_average,
        max_features=len(V2_WEIGHTS),
    ),
)
BUILTIN_NAMES = frozenset(model.name for model in BUILTINS)
