"""The binary tensor extension, against tritonclient's own encoder and decoder (no server)."""

import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient

from mlapi.serving import binary
from mlapi.serving.errors import InferenceError, TensorError

ARRAYS = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([-32768, 7, 32767], dtype=np.int16),
    "INT32": np.array([[-(2**31)], [2**31 - 1]], dtype=np.int32),
    "INT64": np.array([-(2**63), 2**53 + 1, 2**63 - 1], dtype=np.int64),
    "UINT8": np.array([0, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "FP16": np.array([[0.5, -65504.0], [np.inf, 1e-4]], dtype=np.float16),
    "FP32": np.array([[1.5, np.nan, -3.25e38]], dtype=np.float32),
    "FP64": np.array([[0.1, 2.0**-1074], [1e308, -0.0]], dtype=np.float64),
    "BYTES": np.array([[b"", b"caf\xc3\xa9"], [b"\x00\xff", b"x" * 300]], dtype=object),
}


def triton_body(inputs, outputs=None, **kwargs):
    """The body and header length tritonclient would send for ``inputs`` (name -> array)."""
    tensors = []
    for name, (datatype, array, as_binary) in inputs.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=as_binary)
        tensors.append(tensor)
    return httpclient.InferenceServerClient.generate_request_body(tensors, outputs, **kwargs)


def assert_same(decoded, expected):
    assert decoded.shape == expected.shape
    if expected.dtype == object:
        assert decoded.tolist() == expected.tolist()
    else:
        assert decoded.dtype == expected.dtype
        np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_every_datatype_decodes_from_tritonclient_binary(datatype):
    body, header_length = triton_body({"x": (datatype, ARRAYS[datatype], True)})
    assert header_length is not None

    request = binary.decode_request(body, str(header_length))

    assert list(request.inputs) == ["x"]
    assert_same(request.inputs["x"], ARRAYS[datatype])


@pytest.mark.parametrize("datatype", [d for d in ARRAYS if d not in ("FP16", "FP32", "FP64")])
def test_every_datatype_decodes_from_tritonclient_json(datatype):
    array = ARRAYS[datatype]
    if datatype == "BYTES":  # JSON carries text only
        array = np.array([["", "café"], ["x", "y"]], dtype=object)
    body, header_length = triton_body({"x": (datatype, array, False)})
    assert header_length is None

    decoded = binary.decode_request(body).inputs["x"]

    expected = np.vectorize(str.encode, otypes=[object])(array) if datatype == "BYTES" else array
    assert_same(decoded, expected)


def test_json_floats_are_read_as_their_datatype():
    array = np.array([[0.1, 2.5], [-1e30, 3.0]], dtype=np.float32)
    body, _ = triton_body({"x": ("FP32", array, False)})

    decoded = binary.decode_request(body).inputs["x"]

    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([[1, 2.5], [3, 4]], [[1.0, 2.5], [3.0, 4.0]]),
        ([[[1], [2]], [[3], [4]]], [[1.0, 2.0], [3.0, 4.0]]),
        ([1, [2, [3]], 4], [[1.0, 2.0], [3.0, 4.0]]),  # mixed nesting: row-major all the same
        ([1.0, 2.0, 3.0, 4.0], [[1.0, 2.0], [3.0, 4.0]]),
    ],
)
def test_json_data_nested_or_flat_reads_row_major(data, expected):
    decoded = binary.from_json(data, "FP64", (2, 2))
    assert decoded.tolist() == expected


@pytest.mark.parametrize(
    ("data", "datatype", "message"),
    [
        ([[1.0, True], [3.0, 4.0]], "FP32", "JSON numbers"),
        ([[1.0, 2.0], [3.0, "4"]], "FP64", "JSON numbers"),
        ([[1, 2], [3, None]], "INT64", "JSON integers"),
        ([[1, 2], [3, 4.0]], "INT32", "JSON integers"),
        ([[True, False], [1, 0]], "BOOL", "true or false"),
        ([["a", "b"], ["c", 4]], "BYTES", "JSON strings"),
        ([[1.0, 2.0], [3.0, {}]], "FP64", "JSON numbers"),
    ],
)
def test_one_bad_element_deep_in_a_batch_is_refused(data, datatype, message):
    with pytest.raises(TensorError, match=message):
        binary.from_json(data, datatype, (2, 2))


def test_mixed_binary_and_json_inputs_keep_their_order_and_the_request_fields():
    outputs = [httpclient.InferRequestedOutput("y", binary_data=False)]
    body, header_length = triton_body(
        {
            "a": ("FP32", ARRAYS["FP32"], True),
            "b": ("INT64", ARRAYS["INT64"], False),
            "c": ("BYTES", ARRAYS["BYTES"], True),
        },
        outputs,
        request_id="req-7",
        parameters={"custom": 3},
    )

    request = binary.decode_request(body, header_length)

    assert list(request.inputs) == ["a", "b", "c"]
    assert_same(request.inputs["a"], ARRAYS["FP32"])
    assert_same(request.inputs["b"], ARRAYS["INT64"])
    assert_same(request.inputs["c"], ARRAYS["BYTES"])
    assert request.id == "req-7"
    assert request.parameters == {"custom": 3}
    assert binary.select_outputs(request, ["y", "z"]) == [("y", False)]


def raw_body(inputs, tail=b"", header_length=None):
    document = json.dumps({"inputs": inputs}).encode()
    return document + tail, len(document) if header_length is None else header_length


@pytest.mark.parametrize(
    ("inputs", "tail", "message"),
    [
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 4},
                }
            ],
            b"\0" * 4,
            "has 4 bytes of data, but shape [2] of FP32 needs 8",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                }
            ],
            b"\0" * 4,
            "declares 8 bytes of binary data, but only 4 bytes are left",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "INT8",
                    "shape": [2],
                    "parameters": {"binary_data_size": 2},
                }
            ],
            b"\0" * 3,
            "1 bytes after the last input's data",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "BOOL",
                    "shape": [2],
                    "parameters": {"binary_data_size": 2},
                }
            ],
            b"\x01\x02",
            "BOOL data must be bytes 0 or 1",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": 9},
                }
            ],
            struct.pack("<I", 1) + b"a" + struct.pack("<I", 5),
            "BYTES element 1 declares 5 bytes, but only 0 are left",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                }
            ],
            struct.pack("<I", 1) + b"ab",
            "1 bytes are left after its 1 BYTES elements",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [10**12],
                    "parameters": {"binary_data_size": 4},
                }
            ],
            b"\0" * 4,
            "too few for 1000000000000 BYTES elements",
        ),
        (
            [{"name": "x", "datatype": "BF16", "shape": [1], "data": [1]}],
            b"",
            "datatype 'BF16'; the supported datatypes are BOOL, INT8",
        ),
        ([{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}], b"", "non-negative"),
        ([{"name": "x", "datatype": "FP32", "shape": [3]}], b"", "neither data nor"),
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "data": [1],
                    "parameters": {"binary_data_size": 0},
                }
            ],
            b"",
            "both data and",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "parameters": {"binary_data_size": -4},
                }
            ],
            b"",
            "binary_data_size must be a non-negative integer",
        ),
        (
            [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}] * 2,
            b"",
            "Input 'x' is sent twice",
        ),
        ([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}], b"", "needs 4"),
        ([{"name": "x", "datatype": "INT8", "shape": [1], "data": [128]}], b"", "[-128, 127]"),
        ([{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.0]}], b"", "JSON integers"),
        ([{"name": "x", "datatype": "FP16", "shape": [1], "data": [70000]}], b"", "type's range"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e39]}], b"", "type's range"),
        ([{"name": "x", "datatype": "FP64", "shape": [1], "data": [True]}], b"", "JSON numbers"),
        ([{"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}], b"", "true or false"),
        ([{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}], b"", "JSON strings"),
        ([], b"", "inputs must be a non-empty list"),
    ],
)
def test_malformed_requests_are_refused_with_a_clear_message(inputs, tail, message):
    body, header_length = raw_body(inputs, tail)

    with pytest.raises(TensorError, match=message.replace("[", r"\[").replace("(", r"\(")):
        binary.decode_request(body, header_length)


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b'{"inputs": []}', "99", "is 99, but the body has only 14 bytes"),
        (b'{"inputs": []}', "-1", "must be a non-negative integer"),
        (b'{"inputs": []}', "ten", "must be a non-negative integer"),
        (b"[" * 100_000, None, "nested too deeply|not valid JSON"),
        (b'{"inputs": NaN}', None, "not valid JSON"),
        (b"\xff\xfe", None, "not UTF-8|not valid JSON"),
        (b"[1]", None, "must be an object"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1e400]}]}',
            None,
            "FP64 data must be finite",
        ),
        (b'{"inputs": [{"name": "x"}], "id": 5}', None, "id must be a string"),
    ],
)
def test_malformed_headers_are_refused(body, header_length, message):
    with pytest.raises(TensorError, match=message):
        binary.decode_request(body, header_length)


def decode_with_tritonclient(body, header_length):
    return httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_binary_outputs_decode_with_tritonclient(datatype):
    array = ARRAYS[datatype]

    body, header_length = binary.encode_response(
        {"model_name": "m", "model_version": "1", "id": "r"}, {"y": array}, {"y"}
    )

    result = decode_with_tritonclient(body, header_length)
    assert result.get_response()["model_name"] == "m"
    assert result.get_output("y")["datatype"] == datatype
    assert_same(result.as_numpy("y"), array)


def test_json_and_binary_outputs_in_one_response():
    outputs = {
        "label": np.array([1, 0], dtype=np.int64),
        "probabilities": np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32),
        "name": np.array(["yes", "no"], dtype=object),
    }

    body, header_length = binary.encode_response({"model_name": "m"}, outputs, {"probabilities"})

    result = decode_with_tritonclient(body, header_length)
    assert result.get_output("label")["data"] == [1, 0]
    assert "data" not in result.get_output("probabilities")
    assert_same(result.as_numpy("probabilities"), outputs["probabilities"])
    assert result.as_numpy("name").tolist() == ["yes", "no"]
    assert json.loads(body[:header_length])["outputs"][1]["parameters"] == {"binary_data_size": 16}


def test_an_all_json_response_has_no_header_length():
    body, header_length = binary.encode_response({"model_name": "m"}, {"y": np.array([0.5])})

    assert header_length is None
    assert json.loads(body) == {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "FP64", "shape": [1], "data": [0.5]}],
    }


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([np.nan]), "NaN or infinity"),
        (np.array([b"\xff"], dtype=object), "not UTF-8"),
    ],
)
def test_outputs_json_cannot_carry_must_be_asked_as_binary(array, message):
    with pytest.raises(InferenceError, match=message):
        binary.encode_response({}, {"y": array})
    body, header_length = binary.encode_response({}, {"y": array}, {"y"})
    assert_same(decode_with_tritonclient(body, header_length).as_numpy("y"), array)


@pytest.mark.parametrize(
    ("outputs", "parameters", "expected"),
    [
        (None, None, [("a", True), ("b", True)]),  # tritonclient's default: all outputs, binary
        ([("b", True)], None, [("b", True)]),
        ([("b", False), ("a", True)], None, [("b", False), ("a", True)]),
    ],
)
def test_select_outputs_follows_what_tritonclient_asks(outputs, parameters, expected):
    requested = outputs and [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in outputs]
    body, header_length = triton_body(
        {"x": ("FP32", ARRAYS["FP32"], True)}, requested, parameters=parameters
    )

    request = binary.decode_request(body, header_length)

    assert binary.select_outputs(request, ["a", "b"]) == expected


def test_select_outputs_without_parameters_is_json_and_refuses_unknown_names():
    request = binary.decode_request(
        *raw_body([{"name": "x", "datatype": "FP32", "shape": [0], "data": []}])
    )
    assert binary.select_outputs(request, ["a"]) == [("a", False)]

    request.outputs = [{"name": "c"}]
    with pytest.raises(TensorError, match="no output 'c'; its outputs are a, b"):
        binary.select_outputs(request, ["a", "b"])
