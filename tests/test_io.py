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


@pytest.mark.parametrize("case", sorted(LOAD_ERRORS))
def test_load_rejects_wrong_metadata_or_tensors(tmp_path, case):
    metadata_changes, tensors, message = LOAD_ERRORS[case]
    path = saved_with(tmp_path, metadata_changes, tensors)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message) as info:
            fl.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"{case}: {info.value}; peak traced allocation {peak} bytes")
    assert str(path) in str(info.value)
    assert peak < 4 * 2**20


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
