"""Tensor datatypes of the Open Inference Protocol, and their numpy and ONNX equivalents."""

from dataclasses import dataclass

import numpy as np

# Little-endian, as the protocol's binary extension sends them. BYTES tensors hold
# Python ``bytes`` objects (dtype object).
NUMPY_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    """A declared model input or output: ``-1`` in ``shape`` is a dimension that varies."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self):
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def datatype_of(array):
    """The protocol datatype of a numpy array; ValueError for one it has no name for."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if array.dtype.newbyteorder("<") == dtype:
            return name
    raise ValueError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")
