"""The Open Inference Protocol's inference body, with the binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes. When bytes
follow, the HTTP header ``Inference-Header-Content-Length`` gives the JSON part's
length, and each input sent as bytes carries ``parameters.binary_data_size`` instead
of ``data``; the chunks follow the JSON in the order of those inputs. Numbers are
little-endian; a BYTES tensor is its elements in row-major order, each prefixed by
its length as a 4-byte little-endian unsigned integer. tritonclient sends every
input this way by default, and asks for binary outputs unless told otherwise.

Every problem with a request is a :class:`TensorError` whose message the caller can
return to the client as is. Floating-point data is not checked for NaN or infinity
here: tree models read NaN as a missing value, so that is the model's call.
"""

import json
import math
import struct
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from mlapi.serving.datatypes import NUMPY_DTYPES, datatype_of
from mlapi.serving.errors import InferenceError, TensorError

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
_LENGTH_PREFIX = struct.Struct("<I")


@dataclass
class InferenceRequest:
    """A decoded inference request: its inputs as numpy arrays, in the order sent."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict = field(default_factory=dict)
    # The outputs the client asked for, each with its own parameters; None for all.
    outputs: list[dict] | None = None


def decode_request(body, header_length=None):
    """Decode a request body; ``header_length`` is the HTTP header's value, if it was sent."""
    body = memoryview(body)
    split = _header_length(header_length, len(body))
    header = _parse_json(body[:split])
    inputs = _list_of_objects(header, "inputs", required=True)
    outputs = _list_of_objects(header, "outputs", required=False)
    for index, wanted in enumerate(outputs or ()):
        _string(wanted, "name", f"outputs[{index}]")
        _parameters(wanted, f"outputs[{index}]")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError("The request's id must be a string.")

    arrays, offset = {}, split
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        name = _string(tensor, "name", where)
        if name in arrays:
            raise TensorError(f"Input {name!r} is sent twice.")
        datatype = _string(tensor, "datatype", where)
        if datatype not in NUMPY_DTYPES:
            raise TensorError(
                f"Input {name!r} has datatype {datatype!r}; "
                f"the supported datatypes are {', '.join(NUMPY_DTYPES)}."
            )
        shape = _shape(tensor, name)
        size = _parameters(tensor, where).get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise TensorError(
                    f"Input {name!r} has neither data nor parameters.binary_data_size."
                )
            arrays[name] = from_json(tensor["data"], datatype, shape, name)
            continue
        if "data" in tensor:
            raise TensorError(f"Input {name!r} has both data and parameters.binary_data_size.")
        if type(size) is not int or size < 0:
            raise TensorError(
                f"Input {name!r}: binary_data_size must be a non-negative integer, got {size!r}."
            )
        if offset + size > len(body):
            raise TensorError(
                f"Input {name!r} declares {size} bytes of binary data, but only "
                f"{len(body) - offset} bytes are left in the body."
            )
        arrays[name] = from_bytes(body[offset : offset + size], datatype, shape, name)
        offset += size
    if offset != len(body):
        raise TensorError(
            f"The body has {len(body) - offset} bytes after the last input's data "
            f"that no binary_data_size accounts for."
        )
    return InferenceRequest(
        inputs=arrays, id=request_id, parameters=_parameters(header, "the request"), outputs=outputs
    )


def from_bytes(buffer, datatype, shape, name="tensor"):
    """A tensor's raw little-endian bytes as a numpy array of ``shape`` (read-only, no copy)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(buffer, count, name).reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if len(buffer) != count * dtype.itemsize:
        raise TensorError(
            f"Input {name!r} has {len(buffer)} bytes of data, but shape {list(shape)} "
            f"of {datatype} needs {count * dtype.itemsize}."
        )
    if datatype == "BOOL":
        raw = np.frombuffer(buffer, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise TensorError(f"Input {name!r}: BOOL data must be bytes 0 or 1.")
        return raw.view(np.bool_).reshape(shape)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _bytes_elements(buffer, count, name):
    # Every element takes at least its 4-byte prefix: this bounds count before allocating.
    if count * _LENGTH_PREFIX.size > len(buffer):
        raise TensorError(
            f"Input {name!r} has {len(buffer)} bytes of data, too few for {count} BYTES elements."
        )
    elements = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH_PREFIX.size > len(buffer):
            raise TensorError(f"Input {name!r}: BYTES element {index} has no length prefix.")
        (length,) = _LENGTH_PREFIX.unpack_from(buffer, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(buffer):
            raise TensorError(
                f"Input {name!r}: BYTES element {index} declares {length} bytes, "
                f"but only {len(buffer) - offset} are left."
            )
        elements[index] = bytes(buffer[offset : offset + length])
        offset += length
    if offset != len(buffer):
        raise TensorError(
            f"Input {name!r}: {len(buffer) - offset} bytes are left after its {count} "
            "BYTES elements."
        )
    return elements


def from_json(data, datatype, shape, name="tensor"):
    """A tensor's JSON ``data`` (flat or nested, row-major) as a numpy array of ``shape``.

    Checks run per type, not per element in Python: a 1,000-row batch of 20 features
    is 20,000 values, and a loop over them would cost more than many models do.
    """
    values, types = _flatten(data if isinstance(data, list) else [data])
    count = math.prod(shape)
    if len(values) != count:
        raise TensorError(
            f"Input {name!r} has {len(values)} values, but its shape {list(shape)} needs {count}."
        )
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        if not types <= {str}:
            raise TensorError(f"Input {name!r}: BYTES data must be JSON strings.")
        array = np.empty(count, dtype=object)
        array[:] = [v.encode() for v in values]
        return array.reshape(shape)
    if datatype == "BOOL":
        if not types <= {bool}:
            raise TensorError(f"Input {name!r}: BOOL data must be JSON true or false.")
        return np.array(values, dtype=dtype).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not types <= {int}:
            raise TensorError(f"Input {name!r}: {datatype} data must be JSON integers.")
        if values and (min(values) < info.min or max(values) > info.max):
            raise TensorError(
                f"Input {name!r}: {datatype} data must lie in [{info.min}, {info.max}]."
            )
        return np.array(values, dtype=dtype).reshape(shape)
    if not types <= {int, float}:
        raise TensorError(f"Input {name!r}: {datatype} data must be JSON numbers.")
    try:
        wide = np.array(values, dtype=np.float64)
    except OverflowError:
        wide = np.array([np.inf])
    if not np.isfinite(wide).all() or (np.abs(wide) > np.finfo(dtype).max).any():
        raise TensorError(
            f"Input {name!r}: {datatype} data must be finite numbers within the type's range."
        )
    return wide.astype(dtype).reshape(shape)


def _flatten(data):
    """Nested lists to one flat list, row-major, and the set of its elements' types.

    A level whose items are all lists is joined in C (``chain``); only a level that
    mixes lists with values takes the element-by-element walk, without recursion.
    """
    values = data
    while True:
        types = set(map(type, values))
        if list not in types:
            return values, types
        if types != {list}:
            break
        values = list(chain.from_iterable(values))
    flat, stack = [], [iter(values)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat, set(map(type, flat))


def select_outputs(request, available):
    """The outputs to return as ``(name, binary)`` pairs, in the order the client wants them.

    Without an ``outputs`` list every output is returned; ``binary`` comes from the
    output's ``binary_data`` parameter, or else the request's ``binary_data_output``.
    """
    default = request.parameters.get("binary_data_output", False)
    if type(default) is not bool:
        raise TensorError("The parameter binary_data_output must be true or false.")
    if request.outputs is None:
        return [(name, default) for name in available]
    selected = []
    for wanted in request.outputs:
        name = wanted["name"]
        if name not in available:
            raise TensorError(
                f"The model has no output {name!r}; its outputs are {', '.join(available)}."
            )
        binary = wanted.get("parameters", {}).get("binary_data", default)
        if type(binary) is not bool:
            raise TensorError(f"Output {name!r}: binary_data must be true or false.")
        selected.append((name, binary))
    return selected


def encode_response(header, outputs, binary=()):
    """The response body and its JSON header's length (None when the body is all JSON).

    ``header`` holds the response's other members (``model_name``, ``id``, ...);
    ``outputs`` maps each output's name to its array; names in ``binary`` are sent as
    raw bytes after the JSON, the rest as JSON ``data``.
    """
    described, chunks = [], []
    for name, array in outputs.items():
        array = np.asarray(array)
        datatype = datatype_of(array)
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary:
            chunk = _to_bytes(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = _to_json(array, datatype, name)
        described.append(tensor)
    document = json.dumps({**header, "outputs": described}, allow_nan=False).encode()
    if not chunks:
        return document, None
    return b"".join([document, *chunks]), len(document)


def _to_bytes(array, datatype):
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()
    parts = []
    for element in array.reshape(-1):
        raw = element.encode() if isinstance(element, str) else bytes(element)
        parts += [_LENGTH_PREFIX.pack(len(raw)), raw]
    return b"".join(parts)


def _to_json(array, datatype, name):
    flat = array.reshape(-1)
    if datatype == "BYTES":
        try:
            return [e if isinstance(e, str) else bytes(e).decode() for e in flat]
        except UnicodeDecodeError:
            raise InferenceError(
                f"Output {name!r} holds bytes that are not UTF-8 text; ask for it as binary data."
            ) from None
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise InferenceError(
            f"Output {name!r} holds NaN or infinity, which JSON cannot carry; "
            "ask for it as binary data."
        )
    return flat.tolist()


# --- the JSON header ---------------------------------------------------------------


def _header_length(value, body_length):
    if value is None:
        return body_length
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and not text.isdigit():
        raise TensorError(f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}.")
    length = int(text)
    if length > body_length:
        raise TensorError(
            f"{HEADER_LENGTH} is {length}, but the body has only {body_length} bytes."
        )
    return length


def _parse_json(raw):
    try:
        header = json.loads(bytes(raw), parse_constant=_refuse_constant)
    except RecursionError:
        raise TensorError("The JSON header is nested too deeply.") from None
    except UnicodeDecodeError:
        raise TensorError("The JSON header is not UTF-8 text.") from None
    except ValueError as exc:
        raise TensorError(f"The JSON header is not valid JSON: {exc}.") from None
    if not isinstance(header, dict):
        raise TensorError("The JSON header must be an object.")
    return header


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _list_of_objects(document, key, required):
    items = document.get(key)
    if items is None and not required:
        return None
    if not isinstance(items, list) or (required and not items):
        raise TensorError(f"The request's {key} must be a non-empty list of objects.")
    if not all(isinstance(item, dict) for item in items):
        raise TensorError(f"Each of the request's {key} must be an object.")
    return items


def _string(document, key, where):
    value = document.get(key)
    if not isinstance(value, str) or not value:
        raise TensorError(f"{where}.{key} must be a non-empty string.")
    return value


def _parameters(document, where):
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise TensorError(f"The parameters of {where} must be an object.")
    return parameters


def _shape(tensor, name):
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorError(f"Input {name!r}: shape must be a list of non-negative integers.")
    return tuple(shape)
