"""ONNX interop: to_onnx graphs run by ONNX Runtime equal m(x); from_onnx of hand-built LSTM
nodes (onnx.helper, random W/R/B/P) equals onnx.reference (layout 0 and 1) and ONNX Runtime
(clip, sequence_lens); graphs exported by PyTorch load and match PyTorch."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, require

onnx = require("onnx")
ort = require("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

RTOL = {"float32": 2e-5, "float64": 1e-9}
ONNX_TYPE = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}


def to_onnx(module, path, **kwargs):
    if hasattr(module, "to_onnx"):
        return module.to_onnx(path, **kwargs)
    return fl.onnx.to_onnx(module, path, **kwargs)


def from_onnx(model_or_path):
    convert = getattr(fl.LSTM, "from_onnx", None) or fl.onnx.from_onnx
    return convert(model_or_path)


def run_onnxruntime(model_or_path, feeds):
    model = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) \
        else str(model_or_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def check_outputs(label, actual, expected, dtype, computed_in=None):
    """Compare (out, h_n, c_n) tuples of ``dtype``, with the tolerance of the dtype they were
    ``computed_in`` (ONNX Runtime computes float64 graphs in float32)."""
    for name, a, b in zip(("out", "h_n", "c_n"), actual, expected):
        assert a.dtype == np.dtype(dtype), f"{label} {name}: dtype {a.dtype}"
        assert_close(f"{label} {name}", a, b, RTOL[computed_in or dtype])


# ---------------------------------------------------------------- to_onnx, run by ONNX Runtime
EXPORT_CONFIGS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(batch_first=True, dtype="float64"),
    dict(num_layers=2, bidirectional=True, dtype="float64", peephole=True),
    dict(peephole=True),
    dict(clip=0.3),
    dict(reverse=True),
    dict(reverse=True, peephole=True, clip=0.5, num_layers=2, batch_first=True),
    dict(bidirectional=True, peephole=True, clip=0.4),
    dict(bias=False, num_layers=2, dropout=0.5),
]


def config_id(config):
    return ",".join(f"{k}={v}" for k, v in config.items()) or "default"


def export_case(config, sizes=(7, 3, 4, 5)):
    """A seeded module (eval mode) and inputs x, hx, lengths for it."""
    steps, batch, input_size, hidden = sizes
    m = fl.LSTM(input_size, hidden, seed=11, **config).eval()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((batch, steps, input_size) if m.batch_first else
                            (steps, batch, input_size)).astype(m.dtype)
    states = rng.standard_normal((2, m.num_directions * m.num_layers, batch, hidden))
    lengths = np.minimum(np.arange(batch) * 3 + 1, steps)[::-1].copy()
    lengths[0] = steps
    return m, x, tuple(states.astype(m.dtype)), lengths


@pytest.mark.parametrize("config", EXPORT_CONFIGS, ids=config_id)
def test_to_onnx_runs_in_onnxruntime_like_the_module(tmp_path, config):
    m, x, hx, lengths = export_case(config)
    to_onnx(m, tmp_path / "m.onnx")
    out, (h_n, c_n) = m(x)
    check_outputs("x only", run_onnxruntime(tmp_path / "m.onnx", {"x": x}), (out, h_n, c_n),
                  m.dtype.name, "float32")
    to_onnx(m, tmp_path / "full.onnx", all_inputs=True)
    out, (h_n, c_n) = m(x, hx, lengths)
    feeds = {"x": x, "h0": hx[0], "c0": hx[1], "lengths": lengths}
    check_outputs("hx, lengths", run_onnxruntime(tmp_path / "full.onnx", feeds),
                  (out, h_n, c_n), m.dtype.name, "float32")
    if m.clip is not None:  # the clip is active on these inputs
        unclipped = fl.LSTM.from_config({**m.get_config(), "clip": None})
        unclipped.load_state_dict(m.state_dict())
        assert np.max(np.abs(unclipped.eval()(x, hx, lengths)[0] - out)) > 1e-3


@pytest.mark.parametrize("sizes", [(1, 1, 1, 1), (1, 4, 3, 1), (5, 1, 2, 9)])
def test_to_onnx_awkward_sizes(tmp_path, sizes):
    m, x, hx, lengths = export_case(dict(bidirectional=True, peephole=True), sizes)
    to_onnx(m, tmp_path / "m.onnx", all_inputs=True)
    out, (h_n, c_n) = m(x, hx, lengths)
    feeds = {"x": x, "h0": hx[0], "c0": hx[1], "lengths": lengths}
    check_outputs(f"sizes {sizes}", run_onnxruntime(tmp_path / "m.onnx", feeds),
                  (out, h_n, c_n), "float32")


def test_to_onnx_model_metadata_and_argument_checks(tmp_path):
    m = fl.LSTM(4, 5, num_layers=2, batch_first=True, dtype="float64", seed=0)
    to_onnx(m, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10 and [o.version for o in model.opset_import] == [14]
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["out", "h_n", "c_n"]
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]]
    assert dims == [["batch", "time", 4], ["batch", "time", 5], [2, "batch", 5], [2, "batch", 5]]
    assert sum(n.op_type == "LSTM" for n in model.graph.node) == 2
    to_onnx(m, tmp_path / "m22.onnx", opset=22)
    assert onnx.load(str(tmp_path / "m22.onnx")).ir_version == 10
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    out, (h_n, c_n) = m.eval()(x)
    check_outputs("opset 22", run_onnxruntime(tmp_path / "m22.onnx", {"x": x}),
                  (out, h_n, c_n), "float64", "float32")
    for opset in (13, 23, "14", 14.0):
        with pytest.raises(ValueError, match="opset"):
            to_onnx(m, tmp_path / "bad.onnx", opset=opset)
    with pytest.raises(TypeError, match="all_inputs"):
        to_onnx(m, tmp_path / "bad.onnx", all_inputs=1)
    with pytest.raises(TypeError, match="module: expected a fastlstm.LSTM"):
        fl.onnx.to_onnx(object(), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("config", EXPORT_CONFIGS, ids=config_id)
@pytest.mark.parametrize("all_inputs", [False, True])
def test_from_onnx_of_to_onnx_round_trip(tmp_path, config, all_inputs):
    m = fl.LSTM(4, 5, seed=2, **config)
    to_onnx(m, tmp_path / "m.onnx", all_inputs=all_inputs)
    loaded = from_onnx(tmp_path / "m.onnx")
    ignored = {"dropout": 0.0, "seed": None}  # training-only settings are not in the graph
    assert loaded.get_config() == {**m.get_config(), **ignored}
    assert loaded.training
    for (name, a), (_, b) in zip(m.named_parameters(), loaded.named_parameters()):
        assert_close(f"round trip {name}", b, a.astype(np.float32), 0.0)  # stored as float32


# ---------------------------------------------------------------- from_onnx of hand-built nodes
def lstm_node_model(rng, input_size, hidden, direction="forward", layout=0, dtype="float32",
                    bias=True, peephole=False, attributes=None):
    """One ONNX LSTM node with random W, R, B, P; X, sequence_lens, initial_h/c as inputs."""
    dirs = 2 if direction == "bidirectional" else 1
    weights = {"W": rng.uniform(-0.6, 0.6, (dirs, 4 * hidden, input_size)),
               "R": rng.uniform(-0.6, 0.6, (dirs, 4 * hidden, hidden))}
    if bias:
        weights["B"] = rng.uniform(-0.6, 0.6, (dirs, 8 * hidden))
    if peephole:
        weights["P"] = rng.uniform(-0.6, 0.6, (dirs, 3 * hidden))
    elem = ONNX_TYPE[dtype]
    x_dims, state_dims = (["T", "B", input_size], [dirs, "B", hidden]) if layout == 0 else \
        (["B", "T", input_size], ["B", dirs, hidden])
    inputs = [helper.make_tensor_value_info("X", elem, x_dims),
              helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"]),
              helper.make_tensor_value_info("initial_h", elem, state_dims),
              helper.make_tensor_value_info("initial_c", elem, state_dims)]
    node = helper.make_node(
        "LSTM", ["X", "W", "R", "B" if bias else "", "sequence_lens", "initial_h", "initial_c",
                 "P" if peephole else ""], ["Y", "Y_h", "Y_c"], name="lstm",
        hidden_size=hidden, direction=direction, layout=layout, **(attributes or {}))
    outputs = [helper.make_tensor_value_info(name, elem, None) for name in ("Y", "Y_h", "Y_c")]
    initializers = [numpy_helper.from_array(value.astype(dtype), name)
                    for name, value in weights.items()]
    graph = helper.make_graph([node], "lstm_node", inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=7)


def node_inputs(rng, model, steps, batch, lengths=None):
    """Feeds for a hand-built node model, and the (x, hx, lengths) fl call equivalent."""
    node = lstm_nodes(model)[0]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    layout, dirs = attributes["layout"], 2 if attributes["direction"] == b"bidirectional" else 1
    hidden = attributes["hidden_size"]
    input_size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    dtype = "float64" if model.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE \
        else "float32"
    x = rng.standard_normal((steps, batch, input_size)).astype(dtype)
    h0, c0 = rng.standard_normal((2, dirs, batch, hidden)).astype(dtype)
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    swap = (lambda a: a.swapaxes(0, 1).copy()) if layout == 1 else (lambda a: a)
    feeds = {"X": swap(x), "sequence_lens": lengths.astype(np.int32),
             "initial_h": swap(h0), "initial_c": swap(c0)}
    return feeds, (swap(x), (h0, c0), lengths)


def node_outputs_as_torch(outputs, layout):
    """ONNX (Y, Y_h, Y_c) -> fl/PyTorch (out, h_n, c_n) for the node's layout."""
    y, y_h, y_c = outputs
    if layout == 0:  # (T, D, B, H) -> (T, B, D*H)
        return (y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1), y_h, y_c)
    return (y.reshape(y.shape[0], y.shape[1], -1), y_h.swapaxes(0, 1), y_c.swapaxes(0, 1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_from_onnx_node_matches_onnx_reference(direction, layout, peephole, dtype):
    rng = np.random.default_rng([len(direction), layout, peephole, len(dtype)])
    model = lstm_node_model(rng, 4, 3, direction, layout, dtype, peephole=peephole)
    m = from_onnx(model)
    assert m.batch_first == (layout == 1) and m.peephole == peephole and m.dtype == dtype
    assert m.bidirectional == (direction == "bidirectional")
    assert m.reverse == (direction == "reverse")
    feeds, (x, hx, _) = node_inputs(rng, model, steps=5, batch=3)
    expected = node_outputs_as_torch(ReferenceEvaluator(model).run(None, feeds), layout)
    out, (h_n, c_n) = m(x, hx)
    check_outputs(f"{direction} layout={layout}", (out, h_n, c_n), expected, dtype)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_from_onnx_node_with_clip_and_lengths_matches_onnxruntime(direction, layout):
    """ONNX Runtime runs layout 0 only: a layout-1 node is compared with its layout-0 twin."""
    model = lstm_node_model(np.random.default_rng(9), 4, 3, direction, layout, peephole=True,
                            attributes={"clip": 0.6})
    twin = lstm_node_model(np.random.default_rng(9), 4, 3, direction, 0, peephole=True,
                           attributes={"clip": 0.6})
    m = from_onnx(model)
    assert m.clip == pytest.approx(0.6)
    rng = np.random.default_rng(1)
    feeds, (x, hx, lengths) = node_inputs(rng, twin, steps=6, batch=4, lengths=[6, 1, 4, 2])
    expected = node_outputs_as_torch(run_onnxruntime(twin, feeds), 0)
    x = x.swapaxes(0, 1).copy() if layout == 1 else x
    out = m(x, hx, lengths)
    out = (out[0].swapaxes(0, 1) if layout == 1 else out[0], *out[1])
    check_outputs(f"{direction} clip, lengths, layout={layout}", out, expected, "float32")


def test_from_onnx_folds_constant_nodes():
    """Weights computed by Constant/Concat nodes (as exporters write them) are folded."""
    rng = np.random.default_rng(3)
    model = lstm_node_model(rng, 3, 2, bias=True)
    w, r, b = (numpy_helper.to_array(t) for t in model.graph.initializer)
    del model.graph.initializer[:]
    model.graph.node.insert(0, helper.make_node("Concat", ["Wb", "Rb"], ["B"], axis=1))
    for name, value in (("W", w), ("R", r), ("Wb", b[:, :8]), ("Rb", b[:, 8:])):
        model.graph.node.insert(0, helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(value, name)))
    feeds, (x, hx, _) = node_inputs(rng, model, steps=4, batch=2)
    expected = node_outputs_as_torch(ReferenceEvaluator(model).run(None, feeds), 0)
    out, (h_n, c_n) = from_onnx(model)(x, hx)
    check_outputs("constant-folded weights", (out, h_n, c_n), expected, "float32")


@pytest.mark.filterwarnings("ignore")  # the TorchScript exporter's deprecation and tracer notes
@pytest.mark.parametrize("config", [dict(num_layers=2, bidirectional=True, batch_first=True),
                                    dict(bias=False)])
def test_from_onnx_of_pytorch_export_matches_pytorch(tmp_path, config):
    torch = require("torch")
    torch.manual_seed(0)
    tm = torch.nn.LSTM(3, 5, **config).eval()
    x = torch.randn((2, 6, 3) if tm.batch_first else (6, 2, 3))
    torch.onnx.export(tm, (x,), str(tmp_path / "t.onnx"), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "a", 1: "b"}})
    m = from_onnx(tmp_path / "t.onnx")
    assert m.batch_first == tm.batch_first and m.num_layers == tm.num_layers
    with torch.no_grad():
        expected, (h_n, c_n) = tm(x)
    out, (h, c) = m(x.numpy())
    check_outputs("torch.onnx.export", (out, h, c), (expected.numpy(), h_n.numpy(), c_n.numpy()),
                  "float32")


# ---------------------------------------------------------------- what from_onnx refuses
def two_layer_model(tmp_path):
    to_onnx(fl.LSTM(3, 4, num_layers=2, seed=0), tmp_path / "two.onnx")
    return onnx.load(str(tmp_path / "two.onnx"))


def lstm_nodes(model):
    return [n for n in model.graph.node if n.op_type == "LSTM"]


def with_attribute(model, **attributes):
    lstm_nodes(model)[0].attribute.extend(helper.make_attribute(k, v)
                                          for k, v in attributes.items())
    return model


def with_weight_input(model):
    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    model.graph.initializer.remove(w)
    return model


def with_matmul_head(model):
    head = numpy_helper.from_array(np.ones((5, 2), np.float32), "head")
    model.graph.initializer.append(head)
    model.graph.node.append(helper.make_node("MatMul", ["Y", "head"], ["Z"], name="head_matmul"))
    model.graph.output.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
    return model


def with_constant_state(model):
    node = lstm_nodes(model)[0]
    hidden = next(a.i for a in node.attribute if a.name == "hidden_size")
    ones = np.ones((1, 1, hidden), np.float32)
    model.graph.initializer.append(numpy_helper.from_array(ones, "h"))
    node.input[5] = "h"
    return model


def with_second_layer_clip(tmp_path):
    model = two_layer_model(tmp_path)
    lstm_nodes(model)[1].attribute.append(helper.make_attribute("clip", 2.0))
    return model


def truncated_initializer(model):
    r = next(t for t in model.graph.initializer if t.name == "R")
    r.raw_data = r.raw_data[:-4]
    return model


def node_model(**kwargs):
    return lstm_node_model(np.random.default_rng(0), 3, 5, **kwargs)


def with_computed_weight(op_type, shape):
    """W replaced by a node of ``op_type`` on a constant ``shape`` (ConstantOfShape: a
    weight of that shape made at load time)."""
    model = node_model()
    w = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.initializer.remove(w)
    model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "shape"))
    model.graph.node.insert(0, helper.make_node(op_type, ["shape"], ["W"], name="make_w"))
    return model


def with_concat_bomb(copies):
    """W computed as Concat of ``copies`` references to one initializer (tiny file, huge
    result)."""
    model = node_model()
    w = next(t for t in model.graph.initializer if t.name == "W")
    w.name = "W_part"
    model.graph.node.insert(0, helper.make_node("Concat", ["W_part"] * copies, ["W"], axis=0))
    return model


def with_cycle(model):
    """The LSTM node's input X comes from an Identity that reads its own output."""
    model.graph.node.insert(0, helper.make_node("Identity", ["loop"], ["loop"], name="loop"))
    lstm_nodes(model)[0].input[0] = "loop"
    return model


def with_weight_cycle(model):
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "R"))
    model.graph.node.insert(0, helper.make_node("Identity", ["R2"], ["R"], name="a"))
    model.graph.node.insert(0, helper.make_node("Identity", ["R"], ["R2"], name="b"))
    return model


def with_external_weight(path, location):
    model = node_model()
    w = next(t for t in model.graph.initializer if t.name == "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    onnx.save(model, path / "external.onnx")
    return path / "external.onnx"


REFUSED = {
    "weight made by ConstantOfShape": (
        lambda p: with_computed_weight("ConstantOfShape", [1, 2**20, 2**20]),
        "computed by a ConstantOfShape node"),
    "Concat of one weight 100000 times": (lambda p: with_concat_bomb(100_000),
                                          "would create 6000000 elements"),
    "cycle before the first node": (lambda p: with_cycle(node_model()), "must be a graph input"),
    "cycle computing a weight": (lambda p: with_weight_cycle(node_model()), "cycle of nodes"),
    "weight outside the model's directory": (lambda p: with_external_weight(p, "/etc/passwd"),
                                             "cannot read the external data"),
    "weight in a missing file": (lambda p: with_external_weight(p, "missing.bin"),
                                 "cannot read the external data"),
    "weight data shorter than its dims": (
        lambda p: truncated_initializer(node_model()), "initializer 'R' .* is invalid"),
    "relu activation": (lambda p: node_model(attributes={"activations": ["Relu", "Tanh", "Tanh"]}),
                        "activations \\['relu', 'tanh', 'tanh'\\]"),
    "activation_alpha": (lambda p: with_attribute(node_model(), activation_alpha=[0.5]),
                         "activation_alpha"),
    "activation_beta": (lambda p: with_attribute(node_model(), activation_beta=[0.5]),
                        "activation_beta"),
    "input_forget": (lambda p: node_model(attributes={"input_forget": 1}), "input_forget=1"),
    "layout 2": (lambda p: node_model(layout=2), "layout 2 is not 0 or 1"),
    "unknown attribute": (lambda p: with_attribute(node_model(), cell_type=1), "cell_type"),
    "weights fed at run time": (lambda p: with_weight_input(node_model()), "constant weights"),
    "node on the data path": (lambda p: with_matmul_head(node_model()), "MatMul"),
    "constant initial_h": (lambda p: with_constant_state(node_model()), "initial_h"),
    "layers differ in clip": (with_second_layer_clip, "differ in clip"),
    "no LSTM node": (lambda p: helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])), "no LSTM node"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_from_onnx_refuses_what_it_cannot_honour(tmp_path, case):
    make, message = REFUSED[case]
    with pytest.raises(ValueError, match=message) as info:
        from_onnx(make(tmp_path))
    print(f"{case}: {info.value}")


def test_from_onnx_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model_or_path"):
        from_onnx(b"\x08\x07")
    (tmp_path / "garbage.onnx").write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(ValueError, match="garbage.onnx"):
        from_onnx(tmp_path / "garbage.onnx")


def test_importing_fastlstm_onnx_does_not_import_onnx():
    code = "import sys, fastlstm.onnx; assert 'onnx' not in sys.modules, 'onnx imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_from_onnx_reads_external_data_next_to_the_model(tmp_path):
    module = fl.LSTM(3, 4, num_layers=2, seed=0)
    module.to_onnx(tmp_path / "inline.onnx")
    model = onnx.load(tmp_path / "inline.onnx")
    onnx.save(model, tmp_path / "split.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size > 0
    restored = from_onnx(tmp_path / "split.onnx")
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[name], value)
    with pytest.raises(ValueError, match="external file"):  # a proto without its data
        from_onnx(onnx.load(tmp_path / "split.onnx", load_external_data=False))
