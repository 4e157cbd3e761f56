"""Convert between fastlstm.LSTM and ONNX graphs of LSTM nodes (``onnx`` imported lazily).

ONNX's LSTM node holds one layer: W (D, 4H, in), R (D, 4H, H), B (D, 8H) = [Wb | Rb],
P (D, 3H) peepholes, gates in the order i, o, f, c (PyTorch: i, f, g, o; P: i, o, f). Its
output Y is (T, D, B, H) (layout 0) or (B, T, D, H) (layout 1); PyTorch's is (T, B, D*H).
A stack of layers is a chain of LSTM nodes joined by Transpose/Reshape (or Squeeze) glue,
the pattern the usual exporters and :func:`to_onnx` write.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import onnx

    from .lstm import LSTM

# one step of _GraphBuilder.chain: (op_type, extra inputs after the chained one, attributes)
_Op = tuple[str, list[str], dict[str, Any]]

IR_VERSION_LIMIT = 10  # ONNX Runtime 1.31 loads models of IR version <= 10
MIN_OPSET = 14         # LSTM-14 (layout attribute); Squeeze/Slice take axes as inputs
# gate blocks: ONNX (i, o, f, c) -> PyTorch (i, f, g, o), and back
_ONNX_TO_TORCH_GATES = [0, 2, 3, 1]
_TORCH_TO_ONNX_GATES = [0, 3, 1, 2]
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")
# nodes allowed to touch data that depends on graph inputs: layout and shape glue only
_GLUE_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Cast", "Identity", "Shape",
             "Gather", "Slice", "Concat", "Expand", "Min", "Max", "ConstantOfShape", "Split"}
_INPUT_PATH_OPS = {"Transpose", "Cast", "Identity"}
# ops folded when a weight is computed by nodes rather than stored; none creates more
# elements than its inputs hold (Concat and Gather are counted), and folding may create at
# most FOLD_LIMIT times the elements of the model's initializers
_FOLD_OPS = {"Constant", "Cast", "Concat", "Identity", "Reshape", "Transpose", "Squeeze",
             "Unsqueeze", "Split", "Slice", "Gather", "Flatten"}
FOLD_LIMIT = 4
_LAYER_PATH_OPS = {"Transpose", "Reshape", "Squeeze", "Cast", "Identity"}


def to_onnx(module: LSTM, path: str | os.PathLike[str], *, opset: int = 14,
            all_inputs: bool = False) -> None:
    """Write ``module`` (a fastlstm.LSTM) to ``path`` as an ONNX model ONNX Runtime runs.

    The graph takes ``x`` shaped as for a batched ``module(x)`` and returns ``out``,
    ``h_n``, ``c_n`` shaped as ``module(x)`` returns them, through one LSTM node per layer
    (opset ``opset``, IR version <= 10). Float64 modules compute in float32 between Cast
    nodes (ONNX Runtime has no double LSTM); ``batch_first`` goes through Transpose nodes.
    Dropout is left out (an inference graph).

    Parameters
    ----------
    module : LSTM
    path : str or os.PathLike
    opset : int, default 14
        From 14 to 22 (the largest opset of IR version 10).
    all_inputs : bool, default False
        Also take ``h0`` and ``c0`` (D*num_layers, B, H) and ``lengths`` (B,) int64 with
        values in [1, T] as graph inputs, all then required, like ``module(x, (h0, c0),
        lengths)``. Without them the graph is the leanest one: LSTM nodes and layout glue.
    """
    onnx = _import_onnx()
    from onnx import TensorProto, helper

    from .lstm import LSTM

    if not isinstance(module, LSTM):
        raise TypeError(f"module: expected a fastlstm.LSTM, got {type(module).__name__}")
    ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)]) \
        if isinstance(opset, int) and opset >= MIN_OPSET else None
    if ir_version is None or ir_version > IR_VERSION_LIMIT \
            or opset > onnx.defs.onnx_opset_version():
        raise ValueError(f"opset: expected an int from {MIN_OPSET} to the largest opset of IR "
                         f"version <= {IR_VERSION_LIMIT} (22), got {opset!r}")
    if not isinstance(all_inputs, bool):
        raise TypeError(f"all_inputs: expected a bool, got {all_inputs!r}")
    params = module.state_dict()
    num_dirs, hidden, layers = module.num_directions, module.hidden_size, module.num_layers
    direction = "bidirectional" if module.bidirectional else \
        "reverse" if module.reverse else "forward"
    io_type = TensorProto.DOUBLE if module.dtype == np.float64 else TensorProto.FLOAT
    to_float32: list[_Op] = [("Cast", [], {"to": TensorProto.FLOAT})] \
        if io_type != TensorProto.FLOAT else []
    to_io_type: list[_Op] = [("Cast", [], {"to": io_type})] if io_type != TensorProto.FLOAT else []
    x_dims = ["batch", "time", module.input_size] if module.batch_first else \
        ["time", "batch", module.input_size]
    state_dims = [num_dirs * layers, "batch", hidden]
    inputs = [helper.make_tensor_value_info("x", io_type, x_dims)]
    graph = _GraphBuilder()
    transpose_bt: list[_Op] = [("Transpose", [], {"perm": [1, 0, 2]})] if module.batch_first \
        else []
    x = graph.chain(["x"], to_float32 + transpose_bt)
    lengths, h0, c0 = "", "", ""
    if all_inputs:
        inputs += [helper.make_tensor_value_info("h0", io_type, state_dims),
                   helper.make_tensor_value_info("c0", io_type, state_dims),
                   helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])]
        h0, c0 = graph.chain(["h0"], to_float32), graph.chain(["c0"], to_float32)
        lengths = graph.chain(["lengths"], [("Cast", [], {"to": TensorProto.INT32})])
    lstm_outputs: list[str | None] | None = ["h_n", "c_n"] \
        if layers == 1 and not to_io_type else None
    h_n, c_n = [], []
    for layer in range(layers):
        w, r, b, p = (graph.constant(a) if a is not None else ""
                      for a in _onnx_weights(params, layer, module))
        states = [h0, c0]
        if all_inputs and layers > 1:
            bounds = [graph.constant(np.array([num_dirs * k])) for k in (layer, layer + 1)]
            states = [graph.chain([s], [("Slice", [*bounds, graph.constant(np.array([0]))], {})])
                      for s in states]
        attributes = {"hidden_size": hidden, "direction": direction}
        if module.clip is not None:
            attributes["clip"] = float(module.clip)
        y, y_h, y_c = graph.node("LSTM", [x, w, r, b, lengths, *states, p],
                                 [None, *(lstm_outputs or [None, None])], **attributes)
        h_n.append(y_h)
        c_n.append(y_c)
        merge: list[_Op]
        if num_dirs == 1:  # (T, 1, B, H) -> (T, B, H)
            merge = [("Squeeze", [graph.constant(np.array([1]))], {})]
        else:  # (T, 2, B, H) -> (T, B, 2, H) -> (T, B, 2H)
            merge = [("Transpose", [], {"perm": [0, 2, 1, 3]}),
                     ("Reshape", [graph.constant(np.array([0, 0, -1]))], {})]
        if layer < layers - 1:
            x = graph.chain([y], merge)
    graph.chain([y], merge + transpose_bt + to_io_type, "out")
    if lstm_outputs is None:
        concat: list[_Op] = [("Concat", [], {"axis": 0})] if layers > 1 else []
        graph.chain(h_n, concat + to_io_type, "h_n")
        graph.chain(c_n, concat + to_io_type, "c_n")
    outputs = [helper.make_tensor_value_info("out", io_type, [*x_dims[:2], num_dirs * hidden]),
               helper.make_tensor_value_info("h_n", io_type, state_dims),
               helper.make_tensor_value_info("c_n", io_type, state_dims)]
    onnx_graph = helper.make_graph(graph.nodes, "fastlstm_LSTM", inputs, outputs,
                                   initializer=graph.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fastlstm", ir_version=ir_version)
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))


def from_onnx(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> LSTM:
    """Build a fastlstm.LSTM from an ONNX model whose computation is a stack of LSTM nodes.

    Parameters
    ----------
    model_or_path : onnx.ModelProto or str or os.PathLike
        A model with one LSTM node per layer, chained through layout glue (Transpose,
        Reshape, Squeeze, Cast), the pattern of the usual exporters and of :func:`to_onnx`.
        Shape glue after the last node (e.g. a Gather of the last step) is not part of the
        returned module, which returns the full ``out, (h_n, c_n)``.

    Returns
    -------
    LSTM
        A new module in train mode, ``batch_first`` if the graph input is (B, T, in), dtype
        float64 if that input is double, else float32. The nodes' ``sequence_lens``,
        ``initial_h`` and ``initial_c`` become the call's ``lengths`` and ``hx`` (hx shaped
        (D*num_layers, B, H) whatever the layout).

    Raises
    ------
    ValueError
        Naming what cannot be honoured: activations other than Sigmoid/Tanh/Tanh,
        activation_alpha/beta, input_forget=1, non-constant weights, constant nonzero initial
        states or constant sequence_lens, layers that disagree on direction, layout or clip,
        nodes other than LSTM and glue on the data path.
    """
    _import_onnx()
    from .lstm import LSTM

    model = _load_model(model_or_path)
    graph = _GraphView(model)
    nodes = [node for node in model.graph.node
             if node.op_type == "LSTM" and node.domain in ("", "ai.onnx")]
    if not nodes:
        raise ValueError(f"model: no LSTM node in graph {model.graph.name!r}")
    graph.check_data_path_ops()
    layers = [_read_lstm_node(node, graph) for node in nodes]
    first = layers[0]
    for layer in layers[1:]:
        for key in ("direction", "layout", "clip", "hidden_size"):
            if layer[key] != first[key]:
                raise ValueError(f"model: LSTM nodes {first['name']!r} and {layer['name']!r} "
                                 f"differ in {key} ({first[key]!r} vs {layer[key]!r}); a "
                                 f"fastlstm.LSTM has one {key} for all layers")
    num_dirs, hidden = _DIRECTIONS[first["direction"]], first["hidden_size"]
    for previous, layer in zip(nodes, layers[1:]):
        if layer["input_size"] != num_dirs * hidden:
            raise ValueError(f"model: LSTM node {layer['name']!r} takes {layer['input_size']} "
                             f"features, expected {num_dirs * hidden} from the layer before")
        graph.check_reaches(layer["node"].input[0], previous.output[0] if previous.output else "",
                            _LAYER_PATH_OPS, f"input X of LSTM node {layer['name']!r}")
    root, perm = graph.trace_input(nodes[0].input[0])
    time_major = [0, 1, 2] if first["layout"] == 0 else [1, 0, 2]
    batch_major = [time_major[1], time_major[0], 2]
    if perm not in (time_major, batch_major):
        raise ValueError(f"model: graph input {root.name!r} reaches LSTM node {first['name']!r} "
                         f"through a Transpose of perm {perm} (input axes -> node axes); "
                         f"expected (T, B, in) or (B, T, in)")
    elem_type = root.type.tensor_type.elem_type
    dtype = {1: "float32", 11: "float64"}.get(elem_type)  # TensorProto.FLOAT, DOUBLE
    if dtype is None:
        raise ValueError(f"model: graph input {root.name!r} has ONNX element type {elem_type}, "
                         f"expected float (1) or double (11)")
    bias = any(layer["b"] is not None for layer in layers)
    peephole = any(layer["p"] is not None for layer in layers)
    module = LSTM(first["input_size"], hidden, num_layers=len(layers), bias=bias,
                  batch_first=perm == batch_major, bidirectional=num_dirs == 2, dtype=dtype,
                  peephole=peephole, reverse=first["direction"] == "reverse", clip=first["clip"])
    module.load_state_dict(_torch_state(layers, bias, peephole))
    return module


def _import_onnx() -> ModuleType:
    try:
        import onnx
    except ImportError:
        raise ImportError("fastlstm's ONNX conversion needs the 'onnx' package: "
                          "pip install 'fastlstm[onnx]'") from None
    return onnx


def _load_model(model_or_path: Any) -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise TypeError(f"model_or_path: expected an onnx.ModelProto or a path, got "
                        f"{type(model_or_path).__name__}")
    from onnx.checker import ValidationError
    from onnx.external_data_helper import load_external_data_for_model

    path = os.fspath(model_or_path)
    try:
        model = onnx.load(path, load_external_data=False)
    except DecodeError as exc:
        raise ValueError(f"{path!r}: not an ONNX model ({exc})") from None
    try:  # onnx refuses locations outside the model's directory
        load_external_data_for_model(model, os.path.dirname(path))
    except (ValidationError, OSError, ValueError) as exc:
        raise ValueError(f"{path!r}: cannot read the external data of an initializer "
                         f"({type(exc).__name__}: {exc!s:.200})") from None
    return model


def _onnx_weights(params: dict[str, np.ndarray], layer: int, module: LSTM
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """ONNX W (D, 4H, in), R (D, 4H, H), B (D, 8H) or None, P (D, 3H) or None, float32."""
    suffixes = ["", "_reverse"][:module.num_directions]

    def stack(parts: list[np.ndarray]) -> np.ndarray:
        return np.stack(parts).astype(np.float32)

    def gates(array: np.ndarray) -> np.ndarray:
        return np.concatenate([np.split(array, 4)[i] for i in _TORCH_TO_ONNX_GATES])

    w = stack([gates(params[f"weight_ih_l{layer}{s}"]) for s in suffixes])
    r = stack([gates(params[f"weight_hh_l{layer}{s}"]) for s in suffixes])
    b = stack([np.concatenate([gates(params[f"bias_ih_l{layer}{s}"]),
                               gates(params[f"bias_hh_l{layer}{s}"])]) for s in suffixes]) \
        if module.bias else None
    p = stack([np.concatenate([params[f"peephole_{g}_l{layer}{s}"] for g in "iof"])
               for s in suffixes]) if module.peephole else None
    return w, r, b, p


def _read_lstm_node(node: onnx.NodeProto, graph: _GraphView) -> dict[str, Any]:
    """Attributes and PyTorch-ordered weights of one LSTM node, after checking them."""
    from onnx import helper

    name = node.name or node.output[0]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    unknown = set(attributes) - {"activations", "activation_alpha", "activation_beta", "clip",
                                 "direction", "hidden_size", "input_forget", "layout"}
    if unknown:
        raise ValueError(f"LSTM node {name!r}: unknown attributes {sorted(unknown)}")
    direction = attributes.get("direction", b"forward")
    direction = direction.decode(errors="replace") if isinstance(direction, bytes) else direction
    if direction not in _DIRECTIONS:
        raise ValueError(f"LSTM node {name!r}: direction {direction!r} is not one of "
                         f"{sorted(_DIRECTIONS)}")
    num_dirs = _DIRECTIONS[direction]
    activations = attributes.get("activations", [])
    activations = tuple(a.decode(errors="replace").lower() if isinstance(a, bytes) else a
                        for a in (activations if isinstance(activations, list) else [activations]))
    if activations and activations not in (_DEFAULT_ACTIVATIONS, _DEFAULT_ACTIVATIONS * num_dirs):
        raise ValueError(f"LSTM node {name!r}: activations {list(activations)} are not "
                         f"supported; fastlstm computes Sigmoid, Tanh, Tanh")
    for attribute in ("activation_alpha", "activation_beta"):
        if attributes.get(attribute):
            raise ValueError(f"LSTM node {name!r}: attribute {attribute} is not supported "
                             f"(fastlstm's activations take no parameters)")
    if attributes.get("input_forget", 0) != 0:
        raise ValueError(f"LSTM node {name!r}: input_forget={attributes['input_forget']} is not "
                         f"supported (coupled input and forget gates)")
    layout = attributes.get("layout", 0)
    if layout not in (0, 1):
        raise ValueError(f"LSTM node {name!r}: layout {layout} is not 0 or 1")

    inputs = list(node.input) + [""] * (8 - len(node.input))
    w, r, b = (graph.constant(inputs[i], f"{label} of LSTM node {name!r}", required=label != "B")
               for i, label in ((1, "W"), (2, "R"), (3, "B")))
    p = graph.constant(inputs[7], f"P of LSTM node {name!r}")
    if r.ndim != 3 or r.shape[0] != num_dirs or r.shape[1] != 4 * r.shape[2]:
        raise ValueError(f"LSTM node {name!r}: R has shape {r.shape}, expected ({num_dirs}, 4H, H)")
    hidden = r.shape[2]
    if attributes.get("hidden_size", hidden) != hidden:
        raise ValueError(f"LSTM node {name!r}: hidden_size {attributes['hidden_size']} does not "
                         f"match R of shape {r.shape}")
    expected = {"W": (w, (num_dirs, 4 * hidden, None)), "B": (b, (num_dirs, 8 * hidden)),
                "P": (p, (num_dirs, 3 * hidden))}
    for label, (array, shape) in expected.items():
        if array is not None and (array.ndim != len(shape) or any(
                want is not None and got != want for got, want in zip(array.shape, shape))):
            raise ValueError(f"LSTM node {name!r}: {label} has shape {array.shape}, expected "
                             f"{tuple('in' if s is None else s for s in shape)}")
    for index, label in ((4, "sequence_lens"), (5, "initial_h"), (6, "initial_c")):
        value = graph.constant(inputs[index], f"{label} of LSTM node {name!r}", runtime_ok=True)
        if value is not None and (label == "sequence_lens" or np.any(value != 0)):
            raise ValueError(f"LSTM node {name!r}: {label} is a constant; fastlstm takes "
                             f"{'lengths' if index == 4 else 'hx'} when it is called, so the "
                             f"graph must feed it from a graph input")
    clip = attributes.get("clip")
    if clip is not None:  # a float32 attribute: take the shortest decimal that rounds to it
        clip = float(str(np.float32(clip)))
    return {"name": name, "node": node, "direction": direction, "layout": layout, "clip": clip,
            "hidden_size": hidden, "input_size": w.shape[2],
            "w": w, "r": r, "b": b, "p": p}


def _torch_state(layers: list[dict[str, Any]], bias: bool, peephole: bool
                 ) -> dict[str, np.ndarray]:
    """PyTorch-named parameters (gate order i, f, g, o) of the layers read from ONNX."""
    def gates(array: np.ndarray) -> np.ndarray:
        return np.concatenate([np.split(array, 4)[i] for i in _ONNX_TO_TORCH_GATES])

    state = {}
    for k, layer in enumerate(layers):
        hidden = layer["hidden_size"]
        for d, suffix in enumerate(["", "_reverse"][:layer["w"].shape[0]]):
            state[f"weight_ih_l{k}{suffix}"] = gates(layer["w"][d])
            state[f"weight_hh_l{k}{suffix}"] = gates(layer["r"][d])
            if bias:
                b = layer["b"][d] if layer["b"] is not None else np.zeros(8 * hidden)
                state[f"bias_ih_l{k}{suffix}"] = gates(b[:4 * hidden])
                state[f"bias_hh_l{k}{suffix}"] = gates(b[4 * hidden:])
            if peephole:
                p = layer["p"][d] if layer["p"] is not None else np.zeros(3 * hidden)
                for gate, part in zip("iof", np.split(p, 3)):
                    state[f"peephole_{gate}_l{k}{suffix}"] = part
    return state


class _GraphBuilder:
    """Nodes and initializers of a graph under construction, with generated names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def node(self, op_type: str, inputs: list[str], outputs: Sequence[str | None] = (None,),
             **attributes: Any) -> Any:
        """Append a node; ``outputs`` lists names (None: generated). Returns the name(s)."""
        from onnx import helper

        index = len(self.nodes)
        names = [name or f"{op_type.lower()}_{index}_{i}" for i, name in enumerate(outputs)]
        while inputs and not inputs[-1]:  # trailing optional inputs are left out
            inputs = inputs[:-1]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{op_type}_{index}",
                                           **attributes))
        return names if len(names) > 1 else names[0]

    def constant(self, array: npt.ArrayLike) -> str:
        """Add an initializer holding ``array``; return its name."""
        from onnx import numpy_helper

        name = f"const_{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def chain(self, inputs: list[str], ops: list[_Op], output: str | None = None) -> str:
        """Apply ops [(op_type, extra_inputs, attributes)] in turn to ``inputs``.

        The last op writes ``output`` (an Identity if ``ops`` is empty and ``output`` is
        given); returns the name of the result.
        """
        if output is not None and not ops:
            ops = [("Identity", [], {})]
        for i, (op_type, extra_inputs, attributes) in enumerate(ops):
            name = output if i == len(ops) - 1 else None
            inputs = [self.node(op_type, [*inputs, *extra_inputs], [name], **attributes)]
        return inputs[0]


class _GraphView:
    """Read-only queries on a model's main graph: producers, constants, data paths."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self.model = model
        self.producers = {out: node for node in model.graph.node for out in node.output}
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.inputs = {i.name: i for i in model.graph.input if i.name not in self.initializers}
        self.to_array = numpy_helper.to_array
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in set(node.input):
                consumers.setdefault(name, []).append(node)
        self.dependent = set(self.inputs)  # names whose value depends on a graph input
        pending = list(self.inputs)
        while pending:
            for node in consumers.get(pending.pop(), []):
                new = [out for out in node.output if out not in self.dependent]
                self.dependent.update(new)
                pending.extend(new)
        # elements that folding constants may create (see _evaluate)
        self.fold_limit = FOLD_LIMIT * sum(math.prod(t.dims) for t in model.graph.initializer) \
            + 2**16
        self.folded = 0

    def check_data_path_ops(self) -> None:
        """Raise for a node outside LSTM and glue that computes on input-dependent data."""
        for node in self.model.graph.node:
            if node.op_type != "LSTM" and node.op_type not in _GLUE_OPS and any(
                    name in self.dependent for name in node.input):
                raise ValueError(f"model: node {node.name or node.output[0]!r} ({node.op_type}) "
                                 f"computes on the data; from_onnx converts graphs of LSTM "
                                 f"nodes and layout glue ({', '.join(sorted(_GLUE_OPS))}) only")

    def constant(self, name: str, label: str, required: bool = False,
                 runtime_ok: bool = False) -> Any:
        """Value of a constant tensor; None if ``name`` is empty (and not ``required``) or
        depends on graph inputs (and ``runtime_ok``)."""
        if not name:
            if required:
                raise ValueError(f"model: {label} is missing")
            return None
        if name in self.dependent:
            if runtime_ok:
                return None
            raise ValueError(f"model: {label} ({name!r}) depends on a graph input; fastlstm "
                             f"needs constant weights")
        if name in self.initializers:
            return self.initializer(name)
        return self._evaluate(name, label)

    def initializer(self, name: str) -> np.ndarray:
        """Value of an initializer; ValueError if its data does not match its type and dims."""
        from onnx.external_data_helper import uses_external_data

        tensor = self.initializers[name]
        if uses_external_data(tensor):
            raise ValueError(f"model: initializer {name!r} keeps its data in an external file; "
                             f"pass the model's path (from_onnx reads the data next to it) or "
                             f"a model loaded by onnx.load")
        try:
            return self.to_array(tensor)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"model: initializer {name!r} (type {tensor.data_type}, dims "
                             f"{list(tensor.dims)}) is invalid: {exc!s:.200}") from None

    def _evaluate(self, name: str, label: str) -> np.ndarray:
        """Fold a constant computed by nodes (Constant, Cast, Concat, ...) with onnx.reference.

        Only layout ops are folded, node by node, and the elements they would create are
        counted before each runs: a hostile graph cannot make folding allocate more than
        ``FOLD_LIMIT`` times the size of the model's initializers (or an hour-long loop).
        """
        from onnx import ValueInfoProto, helper
        from onnx.reference import ReferenceEvaluator

        values: dict[str, np.ndarray] = {}
        pending = [name]
        order: list[onnx.NodeProto] = []  # producers, each after the nodes it reads
        while pending:
            wanted = pending[-1]
            if wanted in values or not wanted:
                pending.pop()
                continue
            if wanted in self.initializers:
                values[wanted] = self.initializer(wanted)
                pending.pop()
                continue
            if wanted in self.dependent:
                raise ValueError(f"model: {label} ({name!r}) depends on a graph input through "
                                 f"{wanted!r}; fastlstm needs constant weights")
            node = self.producers.get(wanted)
            if node is None:
                raise ValueError(f"model: {label} ({name!r}) needs {wanted!r}, which no node, "
                                 f"initializer or graph input provides")
            if node.op_type not in _FOLD_OPS or node.domain not in ("", "ai.onnx") or any(
                    a.name == "sparse_value" for a in node.attribute):
                raise ValueError(f"model: {label} ({name!r}) is computed by a {node.op_type} "
                                 f"node ({node.domain or 'ai.onnx'}); from_onnx folds only "
                                 f"{', '.join(sorted(_FOLD_OPS))}")
            missing = [i for i in node.input if i and i not in values]
            if not missing:
                order.append(node)
                values.update(self._run_node(node, values, helper, ValueInfoProto,
                                             ReferenceEvaluator, label))
                continue
            if len(pending) > len(self.model.graph.node) + 1 or any(m in pending for m in missing):
                raise ValueError(f"model: {label} ({name!r}) is computed by a cycle of nodes")
            pending.extend(missing)
        return values[name]

    def _run_node(self, node: onnx.NodeProto, values: dict[str, np.ndarray], helper: Any,
                  value_info: Any, evaluator: Any, label: str) -> dict[str, np.ndarray]:
        """Outputs of one folded node, after checking the elements it would create."""
        inputs = [values[i] for i in node.input if i]
        if node.op_type == "Concat":
            created = sum(a.size for a in inputs)
        elif node.op_type == "Gather" and len(inputs) == 2:
            created = inputs[1].size * inputs[0].size // max(min(inputs[0].shape or (1,)), 1)
        else:  # the other folded ops rearrange or cut their input
            created = max((a.size for a in inputs), default=0)
        self.folded += created
        if self.folded > self.fold_limit:
            raise ValueError(f"model: folding {label} would create {self.folded} elements, more "
                             f"than {FOLD_LIMIT} times the model's initializers")
        graph = helper.make_graph([node], "fold", [value_info(name=i) for i in node.input if i],
                                  [value_info(name=o) for o in node.output if o])
        model = helper.make_model(graph, opset_imports=self.model.opset_import,
                                  ir_version=self.model.ir_version)
        try:
            outputs = evaluator(model).run(None, {i: values[i] for i in node.input if i})
        except (ValueError, TypeError, IndexError, KeyError, RuntimeError, AttributeError,
                NotImplementedError) as exc:  # onnx.reference's errors for invalid nodes
            raise ValueError(f"model: {label}: cannot fold node {node.name or node.output[0]!r} "
                             f"({node.op_type}): {type(exc).__name__}: {exc!s:.200}") from None
        return dict(zip([o for o in node.output if o], outputs))

    def check_reaches(self, name: str, target: str, ops: set[str], label: str) -> None:
        """Raise unless ``name`` is computed from ``target`` through ``ops`` only."""
        seen = set()
        while name != target:
            node = self.producers.get(name)
            seen.add(name)
            if node is None or node.op_type not in ops or not node.input or node.input[0] in seen:
                raise ValueError(f"model: {label} does not come from the previous LSTM node's "
                                 f"output Y through {', '.join(sorted(ops))} only")
            name = node.input[0]

    def trace_input(self, name: str) -> tuple[onnx.ValueInfoProto, list[int]]:
        """The graph input reaching ``name`` through Transpose/Cast/Identity, and the axis map.

        Returns ``(value_info, perm)`` with ``name``'s axis j being the input's axis perm[j].
        """
        from onnx import helper

        perm, seen = [0, 1, 2], set()
        while name not in self.inputs:
            node = self.producers.get(name)
            seen.add(name)
            if node is None or node.op_type not in _INPUT_PATH_OPS or not node.input \
                    or node.input[0] in seen:
                raise ValueError(f"model: the first LSTM node's input X ({name!r}) must be a graph "
                                 f"input, possibly through {', '.join(sorted(_INPUT_PATH_OPS))}")
            if node.op_type == "Transpose":
                node_perm = next((helper.get_attribute_value(a) for a in node.attribute
                                  if a.name == "perm"), [2, 1, 0])
                if sorted(node_perm) != [0, 1, 2]:
                    raise ValueError(f"model: Transpose node {node.name!r} before the first LSTM "
                                     f"node has perm {node_perm}, expected a 3-D permutation")
                perm = [node_perm[p] for p in perm]
            name = node.input[0]
        return self.inputs[name], perm
