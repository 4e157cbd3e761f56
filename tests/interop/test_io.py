"""fl.save / fl.load and the safetensors reader: exact round trips, files written by the
safetensors package (PyTorch and NumPy), and strict rejection of corrupted or foreign files."""
import json
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, require
from fastlstm.io import read_metadata, read_safetensors, write_safetensors

CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(peephole=True, clip=0.75),
    dict(reverse=True, peephole=True, num_layers=2, dropout=0.25, seed=3),
    dict(bias=False, clip=2.0),
]


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", CONFIGS)
def test_save_load_round_trip_is_exact(tmp_path, config, dtype):
    m = fl.LSTM(3, 5, dtype=dtype, **{"seed": 1, **config})
    m.eval()
    path = tmp_path / "model.safetensors"
    fl.save(m, path)
    loaded = fl.load(path)
    assert type(loaded) is fl.LSTM and loaded.get_config() == m.get_config()
    assert loaded.training, "a loaded module starts in train mode, as in PyTorch"
    names = [name for name, _ in m.named_parameters()]
    assert [name for name, _ in loaded.named_parameters()] == names
    for (name, a), (_, b) in zip(m.named_parameters(), loaded.named_parameters()):
        assert same_bits(a, b), name
    x = np.random.default_rng(0).standard_normal((2, 4, 3) if m.batch_first else (4, 2, 3))
    out, (h_n, c_n) = m(x)
    loaded.eval()
    out2, (h_n2, c_n2) = loaded(x)
    for label, a, b in [("out", out, out2), ("h_n", h_n, h_n2), ("c_n", c_n, c_n2)]:
        assert_close(f"round trip {label}", b, a, 0.0)
        assert same_bits(a, b), label


def test_metadata_and_file_readable_by_safetensors_package(tmp_path):
    safetensors_numpy = require("safetensors.numpy")
    from safetensors import safe_open

    m = fl.LSTM(4, 6, num_layers=2, peephole=True, seed=0)
    path = tmp_path / "model.safetensors"
    fl.save(m, path)
    metadata = read_metadata(path)
    assert metadata["format"] == "fastlstm" and metadata["class"] == "LSTM"
    assert metadata["version"] == fl.__version__
    assert json.loads(metadata["config"]) == m.get_config()
    theirs = safetensors_numpy.load_file(str(path))
    assert sorted(theirs) == sorted(m.state_dict())
    for name, value in m.state_dict().items():
        assert same_bits(theirs[name], value), name
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == metadata


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_written_state_dict_loads_and_matches_torch(tmp_path, dtype):
    torch = require("torch")
    safetensors_torch = require("safetensors.torch")
    torch.manual_seed(0)
    tm = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True, dtype=getattr(torch, dtype))
    path = tmp_path / "torch.safetensors"
    safetensors_torch.save_file(tm.state_dict(), str(path))
    m = fl.LSTM(5, 7, num_layers=2, bidirectional=True, dtype=dtype)
    m.load_state_dict(read_safetensors(path))
    x = np.random.default_rng(1).standard_normal((6, 3, 5)).astype(dtype)
    with torch.no_grad():
        expected, (h_n, c_n) = tm(torch.from_numpy(x))
    out, (h, c) = m(x)
    rtol = 2e-5 if dtype == "float32" else 1e-9
    assert_close("torch-written out", out, expected.numpy(), rtol)
    assert_close("torch-written h_n", h, h_n.numpy(), rtol)
    assert_close("torch-written c_n", c, c_n.numpy(), rtol)


def test_numpy_written_file_and_special_dtypes(tmp_path):
    safetensors_numpy = require("safetensors.numpy")
    rng = np.random.default_rng(2)
    arrays = {"f64": rng.standard_normal((2, 3)), "f16": rng.standard_normal(4).astype(np.float16),
              "i64": np.arange(-3, 3), "u8": np.arange(5, dtype=np.uint8),
              "flag": np.array([True, False]), "empty": np.zeros((0, 3), np.float32),
              "scalar": np.array(1.5, np.float32)}
    safetensors_numpy.save_file(arrays, str(tmp_path / "np.safetensors"), metadata={"k": "v"})
    read = read_safetensors(tmp_path / "np.safetensors")
    assert sorted(read) == sorted(arrays)
    for name, value in arrays.items():
        assert same_bits(read[name], value), name
        assert read[name].flags.writeable and read[name].flags.c_contiguous
    assert read_metadata(tmp_path / "np.safetensors") == {"k": "v"}


def test_torch_bfloat16_is_widened_exactly(tmp_path):
    torch = require("torch")
    safetensors_torch = require("safetensors.torch")
    bf16 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    safetensors_torch.save_file({"w": bf16}, str(tmp_path / "bf16.safetensors"))
    widened = read_safetensors(tmp_path / "bf16.safetensors")["w"]
    assert same_bits(widened, bf16.float().numpy()), "BF16 is widened exactly to float32"


def test_write_safetensors_stores_little_endian_c_order(tmp_path):
    safetensors_numpy = require("safetensors.numpy")
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    write_safetensors({"b": big_endian, "f": fortran[:, ::-1]}, tmp_path / "t.safetensors")
    for read in (read_safetensors(tmp_path / "t.safetensors"),
                 safetensors_numpy.load_file(str(tmp_path / "t.safetensors"))):
        np.testing.assert_array_equal(read["b"], big_endian)
        np.testing.assert_array_equal(read["f"], fortran[:, ::-1])
    with open(tmp_path / "t.safetensors", "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
    assert (8 + header_size) % 8 == 0, "data starts 8-byte aligned"
    with pytest.raises(TypeError, match="tensors\\['c'\\]: dtype"):
        write_safetensors({"c": np.zeros(2, np.complex64)}, tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="names"):
        write_safetensors({"__metadata__": np.zeros(2)}, tmp_path / "m.safetensors")


# ---------------------------------------------------------------- corrupted and foreign files
def raw_file(path, header, data=b"", header_size=None):
    """Write a safetensors-like file from a header (dict, or raw bytes) and data bytes."""
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(encoded) if header_size is None else header_size
    path.write_bytes(size.to_bytes(8, "little") + encoded + data)
    return path


def bytes_file(path, data):
    path.write_bytes(data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def make_pickle(path):
    """A pickle that would create a marker directory if anything unpickled it."""
    marker = path.with_name("unpickled_marker")

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    path.write_bytes(pickle.dumps({"weight_ih_l0": Payload()}, protocol=4))
    return path


def make_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return path


CORRUPT = {
    "empty file": (lambda p: bytes_file(p, b""), "only 0 bytes"),
    "short file": (lambda p: bytes_file(p, b"\x10\x00\x00"), "header length is missing"),
    "absurd header length": (lambda p: raw_file(p, {}, header_size=2**63), "exceeds"),
    "header beyond file": (lambda p: raw_file(p, {}, header_size=10_000), "truncated"),
    "invalid JSON": (lambda p: raw_file(p, b"{\"a\": [1, 2"), "invalid safetensors header"),
    "invalid UTF-8": (lambda p: raw_file(p, b"{\"\xff\xfe\": 1}"), "invalid safetensors header"),
    "deep nesting": (lambda p: raw_file(p, b"{\"a\":" + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                     "invalid safetensors header"),
    "non-dict header": (lambda p: raw_file(p, b"[1, 2, 3]"), "not a JSON object"),
    "duplicate names": (lambda p: raw_file(p, b'{"a": {"dtype": "U8", "shape": [1], '
                                              b'"data_offsets": [0, 1]}, "a": {"dtype": "U8", '
                                              b'"shape": [1], "data_offsets": [1, 2]}}', b"ab"),
                        "duplicate key"),
    "entry not an object": (lambda p: raw_file(p, {"w": 3}), "expected an object"),
    "extra entry key": (lambda p: raw_file(p, {"w": {**entry("F32", [1], 0, 4), "x": 1}},
                                           b"\0" * 4), "expected an object"),
    "unknown dtype": (lambda p: raw_file(p, {"w": entry("F128", [1], 0, 16)}, b"\0" * 16),
                      "unsupported dtype"),
    "dtype not a string": (lambda p: raw_file(p, {"w": entry(["F32"], [1], 0, 4)}, b"\0" * 4),
                           "unsupported dtype"),
    "negative shape": (lambda p: raw_file(p, {"w": entry("F32", [-1, 2], 0, 4)}, b"\0" * 4),
                       "non-negative integers"),
    "float shape": (lambda p: raw_file(p, {"w": entry("F32", [1.0], 0, 4)}, b"\0" * 4),
                    "non-negative integers"),
    "bool shape": (lambda p: raw_file(p, {"w": entry("F32", [True], 0, 4)}, b"\0" * 4),
                   "non-negative integers"),
    "huge shape": (lambda p: raw_file(p, {"w": entry("F64", [2**20, 2**20], 0, 8)}, b"\0" * 8),
                   "need"),
    "empty but huge shape": (lambda p: raw_file(p, {"w": entry("F32", [0, 2**62], 0, 0)}),
                             "too large"),
    "too many dimensions": (lambda p: raw_file(p, {"w": entry("F32", [1] * 40, 0, 4)}, b"\0" * 4),
                            "too large"),
    "offsets reversed": (lambda p: raw_file(p, {"w": entry("F32", [1], 4, 0)}, b"\0" * 4),
                         "begin <= end"),
    "offsets not a pair": (lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [1],
                                                        "data_offsets": [0]}}, b"\0" * 4),
                           "data_offsets must be"),
    "offsets beyond data": (lambda p: raw_file(p, {"w": entry("F32", [4], 0, 16)}, b"\0" * 8),
                            "file holds 8 bytes"),
    "offsets overlap": (lambda p: raw_file(p, {"a": entry("F32", [2], 0, 8),
                                               "b": entry("F32", [2], 4, 12)}, b"\0" * 12),
                        "overlaps"),
    "gap between tensors": (lambda p: raw_file(p, {"a": entry("F32", [1], 0, 4),
                                                   "b": entry("F32", [1], 8, 12)}, b"\0" * 12),
                            "gap"),
    "trailing bytes": (lambda p: raw_file(p, {"a": entry("F32", [1], 0, 4)}, b"\0" * 12),
                       "file holds 12 bytes"),
    "bad metadata": (lambda p: raw_file(p, {"__metadata__": {"format": 1}}), "__metadata__"),
    "metadata not a map": (lambda p: raw_file(p, {"__metadata__": []}), "__metadata__"),
    "pickle renamed": (make_pickle, "pickle"),
    "torch.save zip renamed": (make_zip, "zip archive"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupted_or_foreign_file_raises_without_large_allocation(tmp_path, case):
    make, message = CORRUPT[case]
    path = make(tmp_path / "model.safetensors")
    tracemalloc.start()
    try:
        for reader in (fl.load, read_safetensors):
            with pytest.raises(ValueError, match=message) as info:
                reader(path)
            assert str(path) in str(info.value), "the error names the file"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"{case}: {info.value}; peak traced allocation {peak} bytes")
    assert peak < 4 * 2**20 + 2 * path.stat().st_size
    assert not (tmp_path / "unpickled_marker").exists(), "nothing was unpickled"


def test_truncated_model_file_raises(tmp_path):
    path = tmp_path / "model.safetensors"
    fl.save(fl.LSTM(3, 4, seed=0), path)
    data = path.read_bytes()
    for cut in (1, 4, len(data) // 2):
        path.write_bytes(data[:-cut])
        with pytest.raises(ValueError, match="truncated|file holds"):
            fl.load(path)


def saved_with(tmp_path, metadata_changes=None, tensors=None):
    """A file saved from an LSTM(3, 4), then with its metadata or tensors replaced."""
    m = fl.LSTM(3, 4, seed=0)
    metadata = {"format": "fastlstm", "class": "LSTM", "config": json.dumps(m.get_config()),
                "version": fl.__version__, **(metadata_changes or {})}
    path = tmp_path / "model.safetensors"
    write_safetensors(m.state_dict() if tensors is None else tensors(m.state_dict()), path,
                      metadata={k: v for k, v in metadata.items() if v is not None})
    return path


def config_with(**changes):
    return json.dumps({**fl.LSTM(3, 4).get_config(), **changes})


LOAD_ERRORS = {
    "no format": ({"format": None}, None, "format"),
    "other format": ({"format": "pt"}, None, "format"),
    "unknown class": ({"class": "GRU"}, None, "class"),
    "config not JSON": ({"config": "{input_size: 3"}, None, "not valid JSON"),
    "config deeply nested": ({"config": "[" * 100_000 + "]" * 100_000}, None, "not valid JSON"),
    "config not an object": ({"config": "[3, 4]"}, None, "JSON object"),
    "config unknown key": ({"config": config_with(cell="gru")}, None, "invalid LSTM config"),
    "config bad value": ({"config": config_with(hidden_size=-4)}, None, "invalid LSTM config"),
    "config size mismatch": ({"config": config_with(hidden_size=5)}, None,
                             "implies 200 parameters, the file holds 144"),
    "config absurd size": ({"config": config_with(hidden_size=2**20, num_layers=1000)}, None,
                           "implies"),
    "config dtype mismatch": ({"config": config_with(dtype="float64")}, None, "dtype"),
    "missing tensor": ({}, lambda s: {"bias_hh" if k == "bias_hh_l0" else k: v
                                      for k, v in s.items()},
                       "missing keys \\['bias_hh_l0'\\]"),
    "extra tensor": ({}, lambda s: {**s, "extra": np.zeros(0, np.float32)}, "unexpected keys"),
    "wrong shape": ({}, lambda s: {**s, "bias_ih_l0": s["bias_ih_l0"].reshape(4, 4)},
                    "bias_ih_l0"),
}


def assert_load_refused(path, message, case):
    """fl.load raises a ValueError that matches `message` and names the file, having
    allocated under 4 MiB."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message) as info:
            fl.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"{case}: {info.value}; peak traced allocation {peak} bytes")
    assert str(path) in str(info.value), "the error names the file"
    assert peak < 4 * 2**20


@pytest.mark.parametrize("case", sorted(LOAD_ERRORS))
def test_load_rejects_wrong_metadata_or_tensors(tmp_path, case):
    metadata_changes, tensors, message = LOAD_ERRORS[case]
    assert_load_refused(saved_with(tmp_path, metadata_changes, tensors), message, case)


def test_save_rejects_unregistered_objects(tmp_path):
    class LSTM(fl.LSTM):  # same name, different class: load could not rebuild it
        pass

    for obj in (object(), {"weight": np.zeros(2)}, LSTM(2, 3)):
        with pytest.raises(TypeError, match="obj: expected one of"):
            fl.save(obj, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("hidden_size", [13, 19, 24, 40])
def test_headers_that_start_like_a_pickle_still_load(tmp_path, hidden_size):
    """Header lengths 640/896/1152/1408 begin with 0x80 0x02..0x05, as a pickle does."""
    path = tmp_path / "m.safetensors"
    module = fl.LSTM(5, hidden_size, num_layers=2, seed=0)
    fl.save(module, path)
    loaded = fl.load(path)
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)


# ---------------------------------------------------------------- Sequential configs are input
def saved_sequential(tmp_path, edit):
    """A compiled Embedding/Bidirectional/LSTM/Dropout/Dense model saved, then its config
    edited by ``edit(config)`` (in place)."""
    model = fl.Sequential([fl.layers.Embedding(10, 4, input_shape=(5,)),
                           fl.layers.Bidirectional(fl.layers.LSTM(3, return_sequences=True)),
                           fl.layers.LSTM(2), fl.layers.Dropout(0.1),
                           fl.layers.Dense(2, activation="softmax")], seed=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    path = tmp_path / "model.safetensors"
    fl.save(model, path)
    metadata, tensors = read_metadata(path), read_safetensors(path)
    config = json.loads(metadata["config"])
    edit(config)
    write_safetensors(tensors, path, metadata={**metadata, "config": json.dumps(config)})
    return path


def set_in(*keys_and_value):
    *keys, last, value = keys_and_value

    def edit(config):
        for key in keys:
            config = config[key]
        config[last] = value
    return edit


def delete(*keys):
    def edit(config):
        for key in keys[:-1]:
            config = config[key]
        del config[keys[-1]]
    return edit


SEQUENTIAL_ERRORS = {
    # the fuzzing run of issue 10: KeyError, MemoryError before any check
    "no compile.metrics": (delete("compile", "metrics"), "config.compile.metrics is missing"),
    "no compile.optimizer": (delete("compile", "optimizer"),
                             "config.compile.optimizer is missing"),
    "no compile.loss": (delete("compile", "loss"), "config.compile.loss is missing"),
    "no wrapped layer": (delete("layers", 1, "config", "layer"),
                         "config.layers\\[1\\].config.layer is missing"),
    "huge units": (set_in("layers", 2, "config", "units", 243810),
                   "config.layers\\[2\\] \\(LSTM with units=243810\\) implies at least"),
    "huge output_dim": (set_in("layers", 0, "config", "output_dim", 4294967297),
                        "config.layers\\[0\\] \\(Embedding with input_dim=10, "
                        "output_dim=4294967297\\)"),
    "huge wrapped units": (set_in("layers", 1, "config", "layer", "config", "units", 10**6),
                           "config.layers\\[1\\] \\(Bidirectional with units=1000000\\)"),
    "huge input features": (lambda config: (config["layers"].pop(0), set_in(
        "layers", 0, "config", "input_shape", [3, 2**20])(config)),
        "config.layers\\[0\\] \\(Bidirectional with units=3\\) implies at least 25165920 "),
    "huge Dense": (set_in("layers", 4, "config", "units", 2**40), "config.layers\\[4\\] \\(Dense"),
    # structure and types
    "no layers": (delete("layers"), "config.layers is missing"),
    "layers not a list": (set_in("layers", {"0": 1}), "config.layers: expected list"),
    "layer not an object": (set_in("layers", 3, "dropout"), "config.layers\\[3\\]: expected a layer"),
    "no class_name": (delete("layers", 0, "class_name"), "config.layers\\[0\\].class_name is missing"),
    "no layer config": (delete("layers", 3, "config"), "config.layers\\[3\\].config is missing"),
    "units a string": (set_in("layers", 2, "config", "units", "2"),
                       "config.layers\\[2\\].config.units: expected int"),
    "units zero": (set_in("layers", 2, "config", "units", 0),
                   "config.layers\\[2\\].config.units: expected a positive int, got 0"),
    "units a bool": (set_in("layers", 2, "config", "units", True),
                     "config.layers\\[2\\].config.units: expected a positive int"),
    "units a float": (set_in("layers", 2, "config", "units", 2.0), "expected int, got 2.0"),
    "wrapped layer not an LSTM": (set_in("layers", 1, "config", "layer", "class_name", "Bidirectional"),
                                  "config.layers\\[1\\].config.layer.class_name: expected 'LSTM'"),
    "unknown layer class": (set_in("layers", 3, "class_name", "GRU"), "invalid Sequential config"),
    "negative input_shape": (set_in("layers", 0, "config", "input_shape", [-5]),
                             "config.layers\\[0\\].config.input_shape"),
    "name not a string": (set_in("layers", 2, "config", "name", {"a": 1}),
                          "config.layers\\[2\\].config.name"),
    "NaN dropout rate": (set_in("layers", 3, "config", "rate", float("nan")), "rate"),
    "compile not an object": (set_in("compile", ["adam"]), "config.compile: expected an object"),
    "metrics not a list": (set_in("compile", "metrics", 3), "config.compile.metrics: expected list"),
    "optimizer without config": (set_in("compile", "optimizer", {"class_name": "Adam"}),
                                 "config.compile.optimizer.config is missing"),
    "metric a number": (set_in("compile", "metrics", [1]), "config.compile.metrics\\[0\\]"),
    "deep nesting": (set_in("layers", 2, "config", "units", json.loads("[" * 500 + "]" * 500)),
                     "nested deeper than"),
}


@pytest.mark.parametrize("case", sorted(SEQUENTIAL_ERRORS))
def test_load_validates_sequential_configs_before_building(tmp_path, case):
    edit, message = SEQUENTIAL_ERRORS[case]
    assert_load_refused(saved_sequential(tmp_path, edit), message, case)


def test_unedited_sequential_file_loads_and_unbuilt_models_round_trip(tmp_path):
    path = saved_sequential(tmp_path, lambda config: None)
    restored = fl.load(path)
    x = np.arange(10).reshape(2, 5) % 10
    assert restored.predict(x).shape == (2, 2)
    unbuilt = fl.Sequential([fl.layers.Embedding(1000, 64), fl.layers.LSTM(8)])
    fl.save(unbuilt, tmp_path / "unbuilt.safetensors")
    assert not fl.load(tmp_path / "unbuilt.safetensors").built


# ---------------------------------------------------------------- other formats are named
def torch_pickle(path):
    torch = require("torch")
    torch.save(torch.nn.LSTM(2, 3).state_dict(), path, _use_new_zipfile_serialization=False)
    return path


def torch_zip(path):
    torch = require("torch")
    torch.save(torch.nn.LSTM(2, 3).state_dict(), path)
    return path


def onnx_model(path):
    require("onnx")
    fl.LSTM(2, 3, seed=0).to_onnx(path)
    return path


def keras_archive(path):
    with zipfile.ZipFile(path, "w") as archive:  # the entries Keras 3 writes
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            archive.writestr(name, b"{}")
    return path


def hdf5_file(path):
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 200)
    return path


def npz_file(path):
    with open(path, "wb") as f:
        np.savez(f, w=np.zeros(3))
    return path


def npy_file(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    return path


FORMATS = {
    "ONNX": ("m.onnx", onnx_model, "an ONNX model; read it with fastlstm.onnx.from_onnx"),
    "torch.save zip": ("m.pt", torch_zip, "zip archive, as written by torch.save"),
    "torch.save legacy pickle": ("m.pt", torch_pickle, "a pickle, protocol 2"),
    "Keras .keras": ("m.keras", keras_archive, "a Keras .keras archive"),
    "Keras .h5": ("m.h5", hdf5_file, "an HDF5 file"),
    "NumPy .npz": ("m.npz", npz_file, "a NumPy .npz archive"),
    "NumPy .npy": ("m.npy", npy_file, "a NumPy .npy array"),
}


@pytest.mark.parametrize("case", sorted(FORMATS))
def test_load_names_the_format_it_found(tmp_path, case):
    name, make, message = FORMATS[case]
    path = make(tmp_path / name)
    for reader in (fl.load, read_safetensors):
        with pytest.raises(ValueError, match=message) as info:
            reader(path)
        assert str(path) in str(info.value)
    print(info.value)


def test_file_cut_inside_a_header_that_starts_like_a_pickle_is_truncated(tmp_path):
    """Issue 10: a header length of 896 bytes starts with 0x80 0x03, as a pickle does."""
    path = tmp_path / "m.safetensors"
    fl.save(fl.LSTM(5, 19, num_layers=2, seed=0), path)
    data = path.read_bytes()
    assert data[:2] == b"\x80\x03"
    for cut in (9, 100, 8 + 895):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated") as info:
            fl.load(path)
        assert "pickle" not in str(info.value)
