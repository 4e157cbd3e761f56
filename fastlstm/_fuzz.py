"""Fuzz ``fastlstm.load`` with mutated model files: ``python -m fastlstm._fuzz --minutes N``.

Valid files of several kinds (``fastlstm.LSTM`` variants, quantised LSTMs and ``Sequential``
models with masks and optimizer state, float32 and float64) are mutated (byte flips,
truncation, header and config JSON edits, tensor dtype and shape edits) and loaded. The only allowed outcomes are a load that gives a working
model or a ``ValueError``/``TypeError``; any other exception, a peak of traced memory beyond
:func:`memory_bound` of the file's size, or a crash (the case being loaded is written to
``<out>/current.safetensors`` first, so a crash leaves it behind) is a failure, saved with
its reproducing bytes to ``--out``. The exit status is 1 if anything failed.

:func:`mutate` and :func:`check_load` are shared with the property-based tests
(``tests/interop/test_fuzz_loaders.py``).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# safetensors dtype codes a mutation may write (including ones no model uses)
_DTYPE_CODES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16",
                "U8", "BOOL", "F8_E4M3", "", "f32"]
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_DEEP = "\x00deep\x00"  # placeholder for a deeply nested value, spliced in after json.dumps
# config keys that size the model or hold its structure: edited more often than the others
_STRUCTURE_KEYS = {"units", "input_dim", "output_dim", "input_size", "hidden_size", "num_layers",
                   "input_shape", "layers", "layer", "config", "class_name", "compile", "loss",
                   "optimizer", "metrics", "shape", "dtype", "data_offsets"}
CASE_SECONDS = 20.0  # a load that takes longer is a finding
_NUMBERS = [0, 1, -1, 2, 3, 7, 243810, 2**20, 2**24 + 1, 2**31 - 1, 2**31, 2**32 + 1,
            4294967297, 2**53 + 1, 2**63 - 1, 2**63, 2**64 + 1, 10**30, -(2**31), -(2**63),
            0.0, -0.0, 0.5, 1.5, 1e300, -1e300, 1e-320, math.nan, math.inf, -math.inf]


def memory_bound(file_size: int) -> int:
    """Most traced memory (bytes) loading a file of ``file_size`` bytes may take."""
    return 16 * 2**20 + 64 * file_size


def seed_files(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Valid model files of several kinds, written with ``fastlstm.save``: name -> bytes."""
    import fastlstm as fl
    from fastlstm import layers

    def sequential_classifier() -> Any:
        model = fl.Sequential([layers.Embedding(11, 4, input_shape=(6,)),
                               layers.Bidirectional(layers.LSTM(3, return_sequences=True)),
                               layers.LSTM(5), layers.Dropout(0.25),
                               layers.Dense(3, activation="softmax")], seed=0)
        model.compile(loss="sparse_categorical_crossentropy", optimizer="adam",
                      metrics=["accuracy"])
        return model

    def sequential_regressor() -> Any:
        model = fl.Sequential([layers.LSTM(4, input_shape=(5, 2), dtype="float64",
                                           return_sequences=True),
                               layers.Dense(2, activation="tanh", dtype="float64"),
                               layers.Dense(1, dtype="float64")], seed=1)
        model.compile(loss="mse", optimizer="sgd", metrics=["mae"])
        return model

    def sequential_unbuilt() -> Any:
        return fl.Sequential([layers.LSTM(2), layers.Dense(1)], seed=2)

    def sequential_checkpoint() -> Any:   # masks, weighted metrics and optimizer state
        model = fl.Sequential([layers.Masking(0.0, input_shape=(4, 2)),
                               layers.LSTM(3, return_sequences=True, go_backwards=True),
                               layers.Dense(2)], seed=3)
        model.compile(loss="mse", optimizer="adam", metrics=["mae"], weighted_metrics=["mse"])
        x = np.ones((4, 4, 2), np.float32)
        x[1, 2:] = 0.0
        model.fit(x, np.zeros((4, 4, 2), np.float32), epochs=1, verbose=0)
        return model

    def quantized(dtype: str, **options: Any) -> Callable[[], Any]:
        return lambda: fl.quantize(fl.LSTM(3, 5, seed=0, **options).eval(), dtype)

    makers: dict[str, Callable[[], Any]] = {
        "lstm": lambda: fl.LSTM(3, 4, seed=0),
        "lstm_bidirectional": lambda: fl.LSTM(2, 3, num_layers=2, bidirectional=True,
                                              batch_first=True, seed=0),
        "lstm_peephole_clip": lambda: fl.LSTM(3, 2, peephole=True, clip=0.75, seed=0),
        "lstm_reverse_float64": lambda: fl.LSTM(2, 3, num_layers=2, reverse=True,
                                                peephole=True, dropout=0.25,
                                                dtype="float64", seed=0),
        "lstm_no_bias": lambda: fl.LSTM(1, 1, bias=False, seed=0),
        "sequential_classifier": sequential_classifier,
        "sequential_regressor_float64": sequential_regressor,
        "sequential_unbuilt": sequential_unbuilt,
        "sequential_checkpoint": sequential_checkpoint,
        "quantized_bfloat16": quantized("bfloat16", num_layers=2, peephole=True),
        "quantized_int8": quantized("int8", bidirectional=True, clip=0.5),
    }
    files = {}
    for name, make in makers.items():
        path = Path(directory, f"{name}.safetensors")
        fl.save(make(), path)
        files[name] = path.read_bytes()
    return files


# ------------------------------------------------------------------ file structure
def _split(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(header, tensor data) of a well-formed file, else None."""
    if len(data) < 8:
        return None
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + size])
    except (ValueError, RecursionError):
        return None
    return (header, data[8 + size:]) if isinstance(header, dict) else None


def _join(header: dict[str, Any], data: bytes, deep: int = 0) -> bytes:
    """A file from a header (``_DEEP`` strings become ``deep`` nested lists) and data."""
    text = json.dumps(header, allow_nan=True)
    nested = "[" * deep + "]" * deep
    text = text.replace(json.dumps(_DEEP), nested).replace(json.dumps(json.dumps(_DEEP))[1:-1],
                                                           nested)
    encoded = text.encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


def _tensors(header: dict[str, Any], data: bytes) -> list[tuple[str, dict[str, Any], bytes]]:
    """(name, entry, bytes) of well-formed entries, in data order."""
    out = []
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        offsets, shape = entry.get("data_offsets"), entry.get("shape")
        if isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape) \
                and isinstance(offsets, list) and len(offsets) == 2 \
                and all(type(o) is int for o in offsets):
            out.append((name, entry, data[offsets[0]:offsets[1]]))
    return sorted(out, key=lambda item: item[1]["data_offsets"][0])


def _relaid(header: dict[str, Any], tensors: list[tuple[str, dict[str, Any], bytes]]
            ) -> tuple[dict[str, Any], bytes]:
    """The header with the tensors laid out again, offsets consistent with their bytes."""
    new_header = {k: v for k, v in header.items() if k == "__metadata__"}
    chunks, offset = [], 0
    for name, entry, payload in tensors:
        new_header[name] = {**entry, "data_offsets": [offset, offset + len(payload)]}
        chunks.append(payload)
        offset += len(payload)
    return new_header, b"".join(chunks)


# ------------------------------------------------------------------ mutations
def _garbage(rng: random.Random) -> Any:
    """A value of a random kind: numbers at the edges, wrong types, nested garbage."""
    kind = rng.randrange(8)
    if kind < 3:
        return rng.choice(_NUMBERS)
    if kind == 3:
        return rng.choice([None, True, False, "", "x", "float16", "LSTM", "Bidirectional",
                           "concat", "adam", "mse", "ééé"])
    if kind == 4:
        return rng.choice([[], {}, [None], [1, 2], {"class_name": "LSTM", "config": {}},
                           {"class_name": "Dense"}, {"config": {}}, [[[[[]]]]]])
    if kind == 5:
        return _DEEP
    if kind == 6:
        return "a" * rng.choice([100, 10_000])
    return [rng.choice(_NUMBERS) for _ in range(rng.randrange(1, 5))]


def _nodes(tree: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) position in a JSON tree, breadth first."""
    positions, level = [], [tree]
    while level:
        nxt = []
        for node in level:
            keys = list(node) if isinstance(node, dict) else \
                range(len(node)) if isinstance(node, list) else []
            for key in keys:
                positions.append((node, key))
                nxt.append(node[key])
        level = nxt
    return positions


def _edit_json(tree: Any, rng: random.Random) -> bool:
    """Edit one position of ``tree`` in place; False if it has none."""
    positions = _nodes(tree)
    if not positions:
        return False
    sizes = [(c, k) for c, k in positions if k in _STRUCTURE_KEYS]
    container, key = rng.choice(sizes if sizes and rng.random() < 0.5 else positions)
    value = container[key]
    action = rng.randrange(6)
    if action == 0:  # delete the key or item
        del container[key]
    elif action == 1 and isinstance(value, (int, float)) and not isinstance(value, bool):
        container[key] = rng.choice([-value, value + 1, value - 1, value * 1000,
                                     value * 2**31, float(value), 0])
    elif action == 2 and isinstance(container, list):
        container.insert(key, json.loads(json.dumps(value, allow_nan=True)))  # duplicate
    elif action == 3 and isinstance(container, dict):
        container[rng.choice(["units", "layer", "config", "class_name", "extra", "input_shape",
                              "compile", "__proto__"])] = _garbage(rng)
    else:
        container[key] = _garbage(rng)
    return True


def _mutate_config(header: dict[str, Any], rng: random.Random) -> bool:
    """Edit the model config held as JSON text in the metadata."""
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("config"), str):
        return False
    try:
        config = json.loads(metadata["config"])
    except (ValueError, RecursionError):
        return False
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not _edit_json(config, rng):
            break
    metadata["config"] = json.dumps(config, allow_nan=True)
    return True


def _mutate_tensor(header: dict[str, Any], data: bytes, rng: random.Random
                   ) -> tuple[dict[str, Any], bytes] | None:
    """Change one tensor's dtype, shape or name, or drop or add a tensor; offsets consistent
    (so the header checks pass and the model checks are reached) unless ``rng`` says not."""
    tensors = _tensors(header, data)
    if not tensors:
        return None
    index = rng.randrange(len(tensors))
    name, entry, payload = tensors[index]
    shape = list(entry.get("shape", []))
    action = rng.randrange(6)
    if action == 0:  # dtype, with the bytes resized to match
        code = rng.choice(_DTYPE_CODES)
        entry = {**entry, "dtype": code}
        size = min(math.prod(shape), 2**20) * _ITEMSIZE.get(code, 4)
        payload = (payload * (size // max(len(payload), 1) + 1))[:size]
    elif action == 1:  # shape: a dimension changed, added, dropped or the axes permuted
        edit = rng.randrange(4)
        if edit == 0 and shape:
            shape[rng.randrange(len(shape))] += rng.choice([-1, 1, 2**20])
        elif edit == 1:
            shape.insert(rng.randrange(len(shape) + 1), rng.choice([1, 2, 0]))
        elif edit == 2 and shape:
            shape.pop(rng.randrange(len(shape)))
        else:
            shape = shape[::-1]
        entry = {**entry, "shape": shape}
        if all(isinstance(n, int) and n >= 0 for n in shape) and math.prod(shape) < 2**20:
            size = math.prod(shape) * _ITEMSIZE.get(str(entry.get("dtype")), 4)
            payload = (payload * (size // max(len(payload), 1) + 1))[:size]
    elif action == 2:  # rename
        other = rng.choice(tensors)[0]
        name = rng.choice([other, name + "_x", name.replace("_l0", "_l1"), "0." + name, ""])
    elif action == 3:  # drop
        tensors.pop(index)
        return _relaid(header, tensors)
    elif action == 4:  # add an extra tensor
        tensors.append((rng.choice(["extra", name + "_reverse", "9.kernel"]), dict(entry),
                        payload))
        return _relaid(header, tensors)
    else:  # values: NaN, inf and extreme bit patterns are still a correct load
        payload = bytes(rng.choice([0x00, 0xFF, 0x7F, 0x80]) for _ in payload)
    tensors[index] = (name, entry, payload)
    if rng.random() < 0.2:  # keep the old offsets: the header no longer matches the data
        return header | {name: entry}, data
    return _relaid(header, tensors)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random mutations of a model file."""
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = _mutate_once(data, rng)
    return data


def _mutate_once(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    split = _split(data)
    if kind <= 3 and split is not None:  # JSON edits of the config, header or tensors
        header, payload = split
        deep = rng.choice([0, 0, 50, 5000, 200_000])
        if kind <= 1 and _mutate_config(header, rng):
            return _join(header, payload, deep)
        if kind == 2:
            _edit_json(header, rng)
            return _join(header, payload, deep)
        result = _mutate_tensor(header, payload, rng)
        if result is not None:
            return _join(*result)
    header_end = min(len(data), 8 + int.from_bytes(data[:8].ljust(8, b"\0"), "little"))
    if kind in (4, 5) and data:  # flip bytes, mostly inside the header
        flipped = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            end = header_end if rng.random() < 0.8 else len(data)
            position = rng.randrange(max(end, 1))
            flipped[position] = rng.randrange(256) if rng.random() < 0.5 else \
                flipped[position] ^ (1 << rng.randrange(8))
        return bytes(flipped)
    if kind == 6:  # truncate, mostly inside the header
        end = header_end if rng.random() < 0.6 else len(data)
        return data[:rng.randrange(end + 1)]
    if kind == 7:  # a lying header length
        size = int.from_bytes(data[:8].ljust(8, b"\0"), "little")
        size = rng.choice([0, 1, size - 1, size + 1, size + 8, 896, 2**31, 2**63 + 5,
                           rng.randrange(2**64)])
        return (size % 2**64).to_bytes(8, "little") + data[8:]
    if kind == 8:  # append or insert bytes
        extra = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 100])))
        position = rng.choice([len(data), rng.randrange(len(data) + 1)])
        return data[:position] + extra + data[position:]
    return data[::-1] if rng.random() < 0.1 else data[:8] + bytes(
        rng.randrange(256) for _ in range(rng.randrange(64)))


def onnx_seed_files(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Valid ONNX models written by ``fastlstm.onnx.to_onnx``: name -> bytes."""
    import fastlstm as fl

    modules = {"onnx_lstm_all_inputs": fl.LSTM(3, 4, seed=0),
               "onnx_bidirectional": fl.LSTM(2, 3, num_layers=2, bidirectional=True,
                                             batch_first=True, seed=0),
               "onnx_peephole_clip_float64": fl.LSTM(2, 2, peephole=True, clip=1.5,
                                                     dtype="float64", seed=0)}
    files = {}
    for name, module in modules.items():
        path = Path(directory, f"{name}.onnx")
        module.to_onnx(path, all_inputs=name == "onnx_lstm_all_inputs")
        files[name] = path.read_bytes()
    return files


def mutate_onnx(data: bytes, rng: random.Random) -> bytes:
    """A random mutation of an ONNX model: of its bytes, or of its graph through ``onnx``
    (attributes, initializers, node wiring and types, constants folded at load time)."""
    import onnx
    from onnx import TensorProto, helper

    if rng.random() < 0.2:
        return _mutate_once(data, rng) if rng.random() < 0.5 else \
            data[:rng.randrange(len(data) + 1)]
    model = onnx.ModelProto.FromString(data)
    graph = model.graph
    for _ in range(rng.choice([1, 1, 2, 3])):
        nodes = list(graph.node)
        node = rng.choice(nodes) if nodes else None
        action = rng.randrange(10)
        if action == 0 and node is not None and node.attribute:  # an attribute's value
            attribute = rng.choice(node.attribute)
            value = rng.choice([_garbage(rng), -3, 0, 2, 2**40, 1.5, math.nan, "reverse",
                                "bidirectional", ["Relu", "Tanh", "Tanh"], [1, 2]])
            try:
                replacement = helper.make_attribute(attribute.name, value)
            except (ValueError, TypeError, OverflowError):  # no ONNX attribute holds it
                replacement = helper.make_attribute(attribute.name, 7)
            node.attribute.remove(attribute)
            node.attribute.append(replacement)
        elif action == 1 and node is not None:  # an extra attribute
            node.attribute.append(helper.make_attribute(
                rng.choice(["hidden_size", "layout", "input_forget", "clip", "perm",
                            "activation_alpha", "direction", "axis", "to"]),
                rng.choice([1, 2, 0, -1, 0.5, [0, 1], [2, 0, 1], "forward"])))
        elif action == 2 and graph.initializer:  # an initializer's dims, type or data
            tensor = rng.choice(graph.initializer)
            edit = rng.randrange(5)
            if edit == 0 and tensor.dims:
                tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice([0, 1, 7, 2**31,
                                                                          2**40])
            elif edit == 1:
                tensor.data_type = rng.choice([TensorProto.FLOAT16, TensorProto.INT64,
                                               TensorProto.STRING, TensorProto.BOOL, 0, 99])
            elif edit == 2:
                tensor.raw_data = tensor.raw_data[:rng.randrange(len(tensor.raw_data) + 1)]
            elif edit == 3:
                tensor.data_location = TensorProto.EXTERNAL
                entry = tensor.external_data.add()
                entry.key, entry.value = "location", rng.choice(["/etc/passwd", "../x", "w.bin"])
            else:
                tensor.dims.append(rng.choice([1, 2]))
        elif action == 3 and node is not None and node.input:  # rewire an input
            index = rng.randrange(len(node.input))
            names = [n for other in nodes for n in other.output] + \
                [t.name for t in graph.initializer] + [i.name for i in graph.input] + ["", "?"]
            node.input[index] = rng.choice(names)
        elif action == 4 and node is not None:  # another operator or domain
            if rng.random() < 0.8:
                node.op_type = rng.choice(["LSTM", "Transpose", "Identity", "Cast", "Relu",
                                           "ConstantOfShape", "Expand", "Loop", "GRU"])
            else:
                node.domain = rng.choice(["ai.onnx", "com.microsoft", "x"])
        elif action == 5 and node is not None:  # drop or duplicate a node
            if rng.random() < 0.5:
                graph.node.remove(node)
            else:
                graph.node.append(node)
        elif action == 6 and graph.initializer:  # a weight computed at load time
            tensor = rng.choice(graph.initializer)
            shape = helper.make_tensor(f"{tensor.name}_shape", TensorProto.INT64, [2],
                                       rng.choice([[2**20, 2**20], [4, 3], [2**62, 4]]))
            graph.node.append(helper.make_node("ConstantOfShape", [shape.name], [tensor.name]))
            graph.initializer.append(shape)
            graph.initializer.remove(tensor)
        elif action == 7 and graph.input:  # a graph input's element type or shape
            tensor_type = rng.choice(graph.input).type.tensor_type
            if rng.random() < 0.5:
                tensor_type.elem_type = rng.choice([0, 2, 7, 10, 11, 16, 99])
            elif tensor_type.shape.dim:
                tensor_type.shape.dim[rng.randrange(len(tensor_type.shape.dim))].dim_value = \
                    rng.choice([0, 1, 5, 2**40])
        elif action == 8:  # opset and IR version
            if model.opset_import and rng.random() < 0.5:
                model.opset_import[0].version = rng.choice([1, 7, 13, 14, 22, 23, 10_000])
            else:
                model.ir_version = rng.choice([0, 1, 3, 10, 11, 99])
        elif node is not None and node.output:  # a loop through the graph
            node.input.insert(0, node.output[0])
            if len(node.input) > 1:
                del node.input[1]
    return model.SerializeToString()


# ------------------------------------------------------------------ loading
def check_load(path: str | os.PathLike[str]) -> str:
    """Load ``path`` (``fastlstm.load``, or ``from_onnx`` for ``.onnx``) and use the model.

    Returns ``"loaded"``, ``"ValueError"`` or ``"TypeError"``, the allowed outcomes;
    anything else raises (the loader's exception, or an ``AssertionError`` if the model is
    unusable or an error from ``fastlstm.load`` does not name the file).
    """
    from fastlstm.io import load
    from fastlstm.onnx import from_onnx

    onnx_file = os.fspath(path).endswith(".onnx")
    try:
        model = from_onnx(path) if onnx_file else load(path)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert onnx_file or repr(os.fspath(path)) in message, \
            f"the error does not name the file: {message}"
        return type(exc).__name__
    _run(model)
    return "loaded"


def _run(model: Any) -> None:
    """Call a loaded model on a small input: it must work or refuse with ValueError."""
    from fastlstm.lstm import LSTM
    from fastlstm.quantized import QuantizedLSTM

    if isinstance(model, (LSTM, QuantizedLSTM)):
        x = np.zeros((2, 3, model.input_size) if model.batch_first else (3, 2, model.input_size))
        out, (h_n, c_n) = model.eval()(x.astype(np.float32 if isinstance(model, QuantizedLSTM)
                                                else model.dtype))
        assert out.shape[-1] == model.num_directions * model.hidden_size
        return
    shape = model.input_shape
    if shape is None or (shape[-1] or 1) > 4096:  # a valid config may ask for long steps
        return
    x = np.zeros((2, *(min(size or 3, 3) for size in shape[:-1]), shape[-1] or 1))
    try:
        model.predict(x)
    except (ValueError, TypeError):  # e.g. a rank the layers do not take
        pass


class CaseTimeout(Exception):
    """A case took longer than ``CASE_SECONDS`` (e.g. a loop in a hostile graph)."""


def _time_out(signum: int, frame: Any) -> None:
    raise CaseTimeout(f"no outcome after {CASE_SECONDS} s")


def run(minutes: float, seed: int, out: Path, max_cases: int | None = None, onnx: bool = True,
        log: Callable[[str], None] = print) -> collections.Counter[str]:
    """Fuzz for ``minutes`` (or ``max_cases``), ONNX models too if ``onnx``; return the
    counts of the outcomes and of the seed kinds."""
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGALRM, _time_out)
    counts: collections.Counter[str] = collections.Counter()
    rng = random.Random(seed)
    warnings.simplefilter("ignore", RuntimeWarning)  # NaN weights are a correct load
    with tempfile.TemporaryDirectory() as tmp:
        seeds = seed_files(tmp)
        if onnx:
            seeds.update(onnx_seed_files(tmp))
        for name in seeds:  # the unmutated files load (and warm the imports)
            suffix = ".onnx" if name.startswith("onnx") else ".safetensors"
            assert check_load(Path(tmp, name + suffix)) == "loaded", name
        deadline = time.monotonic() + 60 * minutes
        case = 0
        while time.monotonic() < deadline and (max_cases is None or case < max_cases):
            kind = rng.choice(sorted(seeds))
            is_onnx = kind.startswith("onnx")
            data = (mutate_onnx if is_onnx else mutate)(seeds[kind], rng)
            current = out / ("current.onnx" if is_onnx else "current.safetensors")
            current.write_bytes(data)
            tracemalloc.start()
            signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
            try:
                outcome = check_load(current)
                _, peak = tracemalloc.get_traced_memory()
                if peak > memory_bound(len(data)):
                    outcome = "bad:memory"
                    detail = f"peak traced memory {peak} bytes for a {len(data)}-byte file"
            except Exception as exc:  # anything but ValueError/TypeError is a finding
                outcome = f"bad:{type(exc).__name__}"
                detail = traceback.format_exc()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                tracemalloc.stop()
            counts[outcome] += 1
            counts[f"kind:{kind}"] += 1
            if outcome.startswith("bad:"):
                saved = out / f"case{case}-{kind}-{outcome[4:]}{current.suffix}"
                saved.write_bytes(data)
                saved.with_suffix(".txt").write_text(detail)
                log(f"case {case} ({kind}): {outcome}, saved to {saved}")
            current.unlink(missing_ok=True)
            case += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastlstm._fuzz", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--no-onnx", action="store_true",
                        help="model files only (no ONNX graphs; for when onnx is missing)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir(), "fastlstm-fuzz"),
                        help="directory for failing cases (default: %(default)s)")
    parser.add_argument("--max-memory-gib", type=float, default=4.0,
                        help="address-space limit, so that a runaway allocation fails "
                             "instead of exhausting the machine (default: %(default)s)")
    args = parser.parse_args(argv)
    import fastlstm.models  # noqa: F401  (mapped before the limit is measured)

    with open("/proc/self/statm") as statm:  # address space in use, in pages
        in_use = int(statm.read().split()[0]) * resource.getpagesize()
    limit = in_use + int(args.max_memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    started = time.monotonic()
    counts = run(args.minutes, args.seed, args.out, args.max_cases, not args.no_onnx)
    total = sum(n for key, n in counts.items() if key.startswith("kind:"))
    bad = sum(n for key, n in counts.items() if key.startswith("bad:"))
    print(f"{total} cases in {time.monotonic() - started:.0f} s (seed {args.seed}), "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
    for key in sorted(counts):
        print(f"  {key}: {counts[key]}")
    print(f"{bad} bad outcomes" + (f", saved in {args.out}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
