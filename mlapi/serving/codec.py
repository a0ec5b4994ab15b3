"""Tensors of the Open Inference Protocol read as the float64 batch every model takes.

Every failure is a :class:`TensorError` whose message says what to send instead.
"""

import numpy as np

from mlapi.serving.errors import TensorError

DATATYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}


def decode(name, shape, datatype, data, max_rows, max_width):
    """Tensor ``name``'s JSON ``data`` as a 2-D float64 batch of its ``shape``."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise TensorError(
            f"Datatype {datatype!r} is not supported; use one of {', '.join(DATATYPES)}."
        )
    rows, width = batch_shape(shape, max_rows, max_width)
    values = flatten(data)
    if len(values) != rows * width:
        raise TensorError(
            f"Input {name!r} has {len(values)} values, but its shape {shape} needs {rows * width}."
        )
    return to_float64(values, dtype, datatype).reshape(rows, width)


def batch_shape(shape, max_rows, max_width):
    """(rows, features) of a [batch, features] or [features] shape, within the limits."""
    if len(shape) == 1:
        shape = [1, *shape]
    if len(shape) != 2:
        raise TensorError(f"The input shape must be [batch, features] or [features]: {shape}.")
    rows, width = shape
    if not 1 <= rows <= max_rows:
        raise TensorError(f"The batch must have 1 to {max_rows} rows, got {rows}.")
    if not 1 <= width <= max_width:
        raise TensorError(f"Each row must have 1 to {max_width} features, got {width}.")
    return rows, width


def flatten(data):
    """Nested lists to one flat list, row-major, without recursion."""
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def to_float64(values, dtype, datatype):
    """Read JSON numbers as ``datatype`` says, refusing what it cannot hold; return float64."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if any(type(v) is not int for v in values):
            raise TensorError(f"{datatype} data must be JSON integers.")
        if min(values) < info.min or max(values) > info.max:
            raise TensorError(f"{datatype} data must lie in [{info.min}, {info.max}].")
        return np.array(values, dtype=dtype).astype(np.float64)
    if any(type(v) not in (int, float) for v in values):
        raise TensorError(f"{datatype} data must be JSON numbers.")
    try:
        array = np.array(values, dtype=np.float64)
    except OverflowError:
        array = np.array([np.inf])
    if not np.isfinite(array).all():
        raise TensorError(f"{datatype} data must be finite: no NaN, Infinity or overflow.")
    if dtype is np.float32:
        if (np.abs(array) > np.finfo(np.float32).max).any():
            raise TensorError("FP32 data must lie within the range of a 32-bit float.")
        array = array.astype(np.float32).astype(np.float64)
    return array
