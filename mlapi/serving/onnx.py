"""ONNX models, run by onnxruntime on the CPU.

ONNX is the format scikit-learn's documentation calls the safe way to ship a model:
a graph of standard operators, whose loading runs no code of the model's author.
``skl2onnx`` converts scikit-learn estimators and pipelines, ``onnxmltools`` LightGBM
and XGBoost boosters, ``torch.onnx.export`` PyTorch modules.

onnxruntime and onnx are imported by :func:`load_onnx`, so a worker that serves only
the built-in models never pays for them. Each session computes on
``intra_op_threads`` threads (default 1: with one session per gunicorn worker and
per model, more threads only fight over the same cores), runs its operators
sequentially, and does not spin waiting for work.
"""

import os
from dataclasses import dataclass, replace

import numpy as np

from mlapi.serving.datatypes import NUMPY_DTYPES, ONNX_TYPES, TensorSpec
from mlapi.serving.errors import InferenceError, ModelLoadError, TensorError

PLATFORM = "onnxruntime_onnx"
DEFAULT_INTRA_OP_THREADS = 1


@dataclass(frozen=True)
class OnnxModel:
    """A loaded ONNX graph: its declared tensors and the session that computes them."""

    path: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    session: object
    platform: str = PLATFORM
    # The graph's own input names, in order, where the inputs are served under others
    # (config.json's declared names); empty when they are served as the graph names them.
    graph_names: tuple[str, ...] = ()

    def renamed(self, names):
        """This model with its inputs served as ``names`` (in order); the graph's own
        names stay accepted as aliases."""
        own = self._input_names()
        if tuple(names) == own:
            return self
        inputs = tuple(
            replace(spec, name=name) for spec, name in zip(self.inputs, names, strict=True)
        )
        return replace(self, inputs=inputs, graph_names=own)

    def predict(self, inputs):
        """Run the graph on ``inputs`` (input name -> array); every output, by name.

        The arrays must have the declared datatype and rank, and the declared size on
        every fixed dimension; anything else is a :class:`TensorError`.
        """
        inputs = self._by_served_name(inputs)
        feeds = {}
        declared = {spec.name: spec for spec in self.inputs}
        unknown = [name for name in inputs if name not in declared]
        if unknown:
            raise TensorError(
                f"The model has no input {unknown[0]!r}; its inputs are {_names(self.inputs)}."
            )
        for spec in self.inputs:
            if spec.name not in inputs:
                raise TensorError(
                    f"Input {spec.name!r} is missing; the model takes {_names(self.inputs)}."
                )
        for spec, graph_name in zip(
            self.inputs, self.graph_names or self._input_names(), strict=True
        ):
            feeds[graph_name] = _feed(spec, inputs[spec.name])
        try:
            values = self.session.run(None, feeds)
        except Exception as exc:  # onnxruntime's errors share no base class but Exception
            raise InferenceError(
                "The model cannot compute these inputs: the runtime refused them.",
                log_detail=str(exc),
            ) from None
        return {spec.name: value for spec, value in zip(self.outputs, values, strict=True)}

    def _input_names(self):
        return tuple(spec.name for spec in self.inputs)

    def _by_served_name(self, inputs):
        """``inputs`` keyed by the served names: a graph's own name, where the input is
        served under another, is read as that input."""
        if not self.graph_names:
            return inputs
        served = set(self._input_names())
        alias = {own: spec.name for own, spec in zip(self.graph_names, self.inputs, strict=True)}
        named = {}
        for name, array in inputs.items():
            target = name if name in served else alias.get(name, name)
            if target in named:
                raise TensorError(f"Input {target!r} is sent twice (once as {name!r}).")
            named[target] = array
        return named


def _names(specs):
    return ", ".join(spec.name for spec in specs)


def _first_line(exc):
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _feed(spec, array):
    array = np.asarray(array)
    if spec.datatype == "BYTES":
        if array.dtype.kind not in "OSU":
            raise TensorError(f"Input {spec.name!r} is BYTES, got numbers.")
        try:
            array = np.vectorize(_text, otypes=[object])(array) if array.size else array
        except UnicodeDecodeError:
            raise TensorError(f"Input {spec.name!r} must hold UTF-8 text.") from None
    elif array.dtype != NUMPY_DTYPES[spec.datatype]:
        raise TensorError(f"Input {spec.name!r} is {spec.datatype}; got {_datatype_name(array)}.")
    if len(array.shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
    ):
        raise TensorError(
            f"Input {spec.name!r} has shape {list(array.shape)}; the model takes {list(spec.shape)}."
        )
    return array


def _text(element):
    return element.decode() if isinstance(element, bytes) else str(element)


def _datatype_name(array):
    for name, dtype in NUMPY_DTYPES.items():
        if array.dtype == dtype:
            return name
    return str(array.dtype)


def session_options(intra_op_threads=DEFAULT_INTRA_OP_THREADS):
    """onnxruntime options for a server worker: few threads, no spinning, shared weights."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only; shape warnings would flood the log
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Prepacking copies weight matrices into a layout private to each process; without
    # it, weights kept in an external data file stay memory-mapped, shared by workers.
    options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def load_onnx(path, intra_op_threads=DEFAULT_INTRA_OP_THREADS):
    """Load an ONNX model; a :class:`ModelLoadError` naming the file says why it cannot be."""
    path = os.path.abspath(os.fspath(path))
    if not isinstance(intra_op_threads, int) or intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be a positive integer, got {intra_op_threads!r}")
    check_external_data(path)
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(
            path, session_options(intra_op_threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's errors share no base class but Exception
        raise ModelLoadError(
            f"{path}: onnxruntime cannot load the model: {_first_line(exc)}"
        ) from None
    inputs = tuple(_spec(path, "input", arg) for arg in session.get_inputs())
    outputs = tuple(_spec(path, "output", arg) for arg in session.get_outputs())
    return OnnxModel(path, inputs, outputs, session)


def _spec(path, role, arg):
    datatype = ONNX_TYPES.get(arg.type)
    if datatype is None:
        hint = (
            " Convert the model without ZipMap (skl2onnx: options={'zipmap': False};"
            " onnxmltools: zipmap=False)."
            if arg.type.startswith("seq(map")
            else ""
        )
        raise ModelLoadError(
            f"{path}: {role} {arg.name!r} has type {arg.type}, which the Open Inference "
            f"Protocol cannot carry.{hint}"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape or ())
    return TensorSpec(arg.name, datatype, shape)


def check_external_data(path):
    """The external data files ``path`` references; ModelLoadError for one outside its folder.

    ONNX keeps large tensors in separate files named by a relative ``location``; a
    graph naming ``../../etc/shadow`` or an absolute path would make the runtime read
    a file the model's author chose. Only the graph is parsed here, not the data.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError, onnx's own errors
        raise ModelLoadError(f"{path}: not a readable ONNX model: {_first_line(exc)}") from None
    folder = os.path.realpath(os.path.dirname(path))
    files = set()
    for tensor in _all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = os.path.realpath(os.path.join(folder, location))
        if (
            not location
            or os.path.isabs(location)
            or os.path.commonpath([folder, target]) != folder
        ):
            raise ModelLoadError(
                f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, outside the "
                "model's folder; external data files must sit beside the model."
            )
        files.add(target)
    return sorted(files)


def _all_tensors(model):
    """Every tensor of the model: initializers and constant attributes, in subgraphs too."""
    graphs = [model.graph]
    nodes = [node for function in model.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)
