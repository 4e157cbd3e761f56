"""Save and load models as safetensors files, written and read with NumPy alone.

A safetensors file is ``u64 little-endian header length n | n bytes of JSON header | data``.
The header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the start of the data) and may hold ``"__metadata__"``, a str -> str
map. Data is little-endian in C order. ``save`` stores the model's class, its config as JSON
and the fastlstm version in the metadata; ``load`` rebuilds the model from a fixed registry
of classes and never unpickles anything.

The reader is strict: every header field, offset and size is validated against the file
size before any tensor is read, and the model config against the tensors before anything
is built, so a truncated, corrupted or lying file raises ``ValueError`` (naming the path
and the problem) without large allocations. ``python -m fastlstm._fuzz`` fuzzes this.
"""
from __future__ import annotations

import json
import math
import os
import pickletools
import reprlib
import zipfile
from collections.abc import Collection, Mapping
from importlib import import_module
from io import BufferedIOBase
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from . import __version__

FORMAT = "fastlstm"
MAX_HEADER_BYTES = 100 * 2**20
MAX_DIMS = 32  # the most NumPy 1.x arrays have
MAX_CONFIG_DEPTH = 32  # a saved Sequential config nests 9 levels deep
# parameters a config of an unbuilt model (whose file holds no tensors) may imply
UNBUILT_PARAMETER_LIMIT = 2**24
# model class name -> (module, attribute); load never builds anything else.
REGISTRY: dict[str, tuple[str, str]] = {"LSTM": ("fastlstm.lstm", "LSTM"),
                                        "Sequential": ("fastlstm.models", "Sequential"),
                                        "QuantizedLSTM": ("fastlstm.quantized", "QuantizedLSTM")}

# safetensors dtype code -> little-endian NumPy dtype. BF16 has no NumPy dtype: it is read
# as its raw 16 bits and widened exactly to float32.
_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES: dict[np.dtype[Any], str] = {dtype: code for code, dtype in _DTYPES.items()
                                    if code != "BF16"}
# signatures of the formats ``load`` names when it is given something other than safetensors
_PICKLE_PROTOCOL_BYTE = 0x80  # a pickle of protocol >= 2 starts with PROTO (0x80), a version
_PICKLE_OPCODES = {ord(op.code) for op in pickletools.opcodes}  # ... and an opcode
_ZIP_MAGIC = b"PK\x03\x04"    # torch.save, Keras .keras, NumPy .npz
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
# an ONNX ModelProto starts with ir_version (field 1, varint) and then another field:
# producer_name, producer_version, domain, model_version, doc_string, graph or opset_import
_ONNX_IR_VERSION_TAG = 0x08
_ONNX_MODEL_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}
# a validated header entry: (dtype code, shape, begin, end) with offsets relative to the data
_Entry = tuple[str, tuple[int, ...], int, int]


def save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write a model (e.g. ``fastlstm.LSTM``) to ``path`` as a safetensors file.

    Parameters
    ----------
    obj : LSTM or Sequential
        Any registered model class: it provides ``get_config()`` and ``state_dict()``.
    path : str or os.PathLike
        Destination file; it is overwritten.
    """
    class_name = _registered_name(obj)
    config = json.dumps(obj.get_config(), sort_keys=True)
    metadata = {"format": FORMAT, "class": class_name, "config": config, "version": __version__}
    write_safetensors(obj.state_dict(), path, metadata=metadata,
                      bfloat16=getattr(obj, "bfloat16_tensors", ()))


def load(path: str | os.PathLike[str]) -> Any:
    """Rebuild the model saved by :func:`save` in ``path`` (new module, train mode).

    Raises ``ValueError`` naming the path (and the field) if the file is not a valid
    fastlstm safetensors file (a file of another format is named, with what reads it),
    names an unknown class, or holds a config or tensors the class rejects. The config is
    checked before anything is built: its structure, its size fields, and the parameter
    counts they imply against the tensors the file holds.
    """
    entries, metadata, _ = _read(path, with_data=False)
    where = repr(os.fspath(path))
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{where}: metadata 'format' is {metadata.get('format')!r:.100}, "
                         f"expected {FORMAT!r}; use fastlstm.io.read_safetensors(path) to read "
                         f"raw tensors and model.load_state_dict(...) to load them")
    class_name = metadata.get("class")
    if class_name not in REGISTRY:
        raise ValueError(f"{where}: metadata 'class' is {class_name!r:.100}, expected one of "
                         f"{sorted(REGISTRY)}")
    try:
        config = json.loads(metadata.get("config", ""))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{where}: metadata 'config' is not valid JSON ({exc!s:.200})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: metadata 'config' must be a JSON object, got "
                         f"{type(config).__name__}")
    _check_depth(config, f"{where}: metadata 'config'")
    # check structure and sizes before from_config allocates the parameters
    stored = sum(math.prod(shape) for _, shape, _, _ in entries.values())
    if class_name == "LSTM":
        count = _lstm_parameter_count(config)
        if count is not None and count != stored:
            raise ValueError(f"{where}: the LSTM config implies {count} parameters, "
                             f"the file holds {stored}")
    elif class_name == "QuantizedLSTM":   # the parameters, plus int8's scales
        count = _lstm_parameter_count(config)
        if count is not None and count > stored:
            raise ValueError(f"{where}: the QuantizedLSTM config implies at least {count} "
                             f"parameters, the file holds {stored}")
    else:
        _check_sequential_config(config, stored, f"{where}: metadata 'config'")
    module_name, attribute = REGISTRY[class_name]
    cls = getattr(import_module(module_name), attribute)
    try:
        obj = cls.from_config(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: invalid {class_name} config {config!r:.500}: "
                         f"{exc}") from None
    tensors = read_safetensors(path)
    expected = obj.state_dict()
    for name, array in tensors.items():
        if name in expected and array.dtype != expected[name].dtype:
            raise ValueError(f"{where}: tensor {name!r} has dtype {array.dtype}, but "
                             f"the config says {expected[name].dtype}")
    try:
        obj.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: tensors do not match the {class_name} config: "
                         f"{exc}") from None
    return obj


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file (e.g. one written by PyTorch).

    Returns
    -------
    dict of str -> numpy.ndarray
        Native-endian, C-contiguous, writable arrays in file order; BF16 tensors are
        widened exactly to float32. Use ``model.load_state_dict(read_safetensors(path))``.
    """
    return _read(path)[2]


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the ``__metadata__`` map (str -> str) of a safetensors file, or ``{}``."""
    return _read(path, with_data=False)[1]


def write_safetensors(tensors: Mapping[str, npt.ArrayLike], path: str | os.PathLike[str],
                      metadata: Mapping[str, str] | None = None,
                      bfloat16: Collection[str] = ()) -> None:
    """Write a mapping name -> array to ``path`` as a safetensors file.

    Parameters
    ----------
    tensors : mapping of str -> array-like
        Arrays of a bool, integer or float16/32/64 dtype.
    path : str or os.PathLike
    metadata : mapping of str -> str, optional
    bfloat16 : collection of str, optional
        Names of float32 tensors to store as BF16 (rounded to nearest even).
    """
    path = os.fspath(path)  # a str or path-like, never a file descriptor
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"tensors: names must be non-empty strings other than "
                             f"'__metadata__', got {name!r}")
        array = np.asarray(value)
        little = array.dtype.newbyteorder("<") if array.dtype.byteorder != "|" else array.dtype
        if little not in _CODES:
            raise TypeError(f"tensors[{name!r}]: dtype must be one of "
                            f"{sorted(str(d) for d in _CODES)}, got {array.dtype}")
        if name in bfloat16:
            if little != _DTYPES["F32"]:
                raise TypeError(f"tensors[{name!r}]: BF16 needs a float32 array, got {array.dtype}")
            bits = np.ascontiguousarray(array, dtype=little).view("<u4").astype(np.uint64)
            array = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
            little = array.dtype
        arrays[name] = np.ascontiguousarray(array, dtype=little)
    header, offset = {}, 0
    for name, array in arrays.items():
        header[name] = {"dtype": "BF16" if name in bfloat16 else _CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError(f"metadata: expected a mapping of str -> str, got {metadata!r}")
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # pad so that the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for array in arrays.values():
            f.write(array.tobytes(order="C"))


def _lstm_parameter_count(config: dict[str, Any]) -> int | None:
    """Number of parameters an LSTM config implies; None if its sizes are not ints."""
    sizes: tuple[Any, ...] = (config.get("input_size"), config.get("hidden_size"),
                              config.get("num_layers", 1))
    if not all(type(size) is int and size >= 0 for size in sizes):
        return None  # from_config reports the bad value
    input_size, hidden, layers = sizes
    directions = 2 if config.get("bidirectional") is True else 1
    inputs = input_size + (layers - 1) * directions * hidden  # summed over the layers
    per_layer = (8 * hidden if config.get("bias", True) is True else 0) \
        + (3 * hidden if config.get("peephole") is True else 0)
    return directions * (4 * hidden * (inputs + layers * hidden) + layers * per_layer)


def _check_depth(value: Any, label: str) -> None:
    """Refuse JSON nested deeper than any config is (so no check recurses without bound)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(f"{label}: nested deeper than {MAX_CONFIG_DEPTH} levels")
        level = [item for node in level if isinstance(node, (dict, list))
                 for item in (node.values() if isinstance(node, dict) else node)]


def _check_sequential_config(config: dict[str, Any], stored: int, label: str) -> None:
    """Validate a Sequential config before ``from_config`` builds anything.

    Checks the structure ``from_config`` relies on (the layers list, each layer's
    ``class_name`` and ``config``, a Bidirectional layer's wrapped LSTM, the compile
    settings), the layers' size fields, and that the parameters those sizes imply (a lower
    bound, whatever the layers' parameter layout) fit in the ``stored`` tensor elements.
    ``label`` (the file and the metadata key) starts every message.
    """
    layers = _config_field(config, "layers", list, "config", label)
    _check_name_and_shape(config, "config", label)
    compiled = config.get("compile")
    if compiled:
        _check_compile(compiled, label)
    input_shape = config.get("input_shape")
    total, features = 0, None
    for index, spec in enumerate(layers):
        path = f"config.layers[{index}]"
        class_name, layer_config = _layer_spec(spec, path, label)
        if index == 0:  # Sequential builds for the first layer's input shape, else its own
            input_shape = layer_config.get("input_shape") or input_shape
            limit = stored if input_shape else max(stored, UNBUILT_PARAMETER_LIMIT)
            features = input_shape[-1] if input_shape else None
        if class_name == "Bidirectional":
            inner = _config_field(layer_config, "layer", dict, f"{path}.config", label)
            inner_name, inner_config = _layer_spec(inner, f"{path}.config.layer", label)
            if inner_name != "LSTM":
                raise ValueError(f"{label} field {path}.config.layer.class_name: expected "
                                 f"'LSTM', got {reprlib.repr(inner_name)}")
            merged = layer_config.get("merge_mode", "concat") == "concat"
            bound, features = _lstm_layer_bound(inner_config, features, 2, merged,
                                                f"{path}.config.layer.config", label)
            sizes = f"units={inner_config['units']}"
        elif class_name == "LSTM":
            bound, features = _lstm_layer_bound(layer_config, features, 1, True,
                                                f"{path}.config", label)
            sizes = f"units={layer_config['units']}"
        elif class_name == "Dense":
            units = _config_size(layer_config, "units", f"{path}.config", label)
            use_bias = layer_config.get("use_bias", True) is True
            bound, sizes = units * ((features or 1) + use_bias), f"units={units}"
            features = units
        elif class_name == "Embedding":
            input_dim, output_dim = (_config_size(layer_config, key, f"{path}.config", label)
                                     for key in ("input_dim", "output_dim"))
            bound, features = input_dim * output_dim, output_dim
            sizes = f"input_dim={input_dim}, output_dim={output_dim}"
        else:  # Dropout keeps the features; a class unknown here may change them
            bound, sizes = 0, ""
            features = features if class_name == "Dropout" else None
        total += bound
        if total > limit:  # name the first layer whose sizes (or input) exceed the file
            raise ValueError(f"{label} field {path} ({class_name} with {sizes}) implies at "
                             f"least {bound} parameters, {total} up to this layer, but the file "
                             f"holds {stored} tensor elements")


def _lstm_layer_bound(config: dict[str, Any], features: int | None, directions: int,
                      concat: bool, path: str, label: str) -> tuple[int, int]:
    """(fewest parameters, output features) of a Keras-style LSTM layer's config."""
    units = _config_size(config, "units", path, label)
    use_bias = config.get("use_bias", True) is True
    bound = directions * 4 * units * ((features or 1) + units + use_bias)
    return bound, units * (directions if concat else 1)


def _layer_spec(spec: Any, path: str, label: str) -> tuple[str, dict[str, Any]]:
    """Check ``{"class_name": str, "config": {...}}``; return both."""
    if not isinstance(spec, dict):
        raise ValueError(f"{label} field {path}: expected a layer {{'class_name': ..., "
                         f"'config': {{...}}}}, got {reprlib.repr(spec)}")
    class_name = _config_field(spec, "class_name", str, path, label)
    config = _config_field(spec, "config", dict, path, label)
    _check_name_and_shape(config, f"{path}.config", label)
    return class_name, config


def _check_name_and_shape(config: dict[str, Any], path: str, label: str) -> None:
    """A model's or layer's optional ``name`` (str) and ``input_shape`` (list of sizes)."""
    name = config.get("name")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"{label} field {path}.name: expected a str or null, got "
                         f"{reprlib.repr(name)}")
    shape = config.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(
            size is None or (_is_count(size) and size > 0) for size in shape)):
        raise ValueError(f"{label} field {path}.input_shape: expected null or a list of at most "
                         f"{MAX_DIMS} positive ints or nulls, got {reprlib.repr(shape)}")


def _check_compile(compiled: Any, label: str) -> None:
    """``compile``: {"loss", "optimizer", "metrics"}, each a name or a serialized object."""
    if not isinstance(compiled, dict):
        raise ValueError(f"{label} field config.compile: expected an object with keys loss, "
                         f"optimizer, metrics, got {reprlib.repr(compiled)}")
    for key in ("loss", "optimizer"):
        _check_identifier(_config_field(compiled, key, (str, dict), "config.compile", label),
                          f"config.compile.{key}", label)
    metrics = _config_field(compiled, "metrics", list, "config.compile", label)
    for index, metric in enumerate(metrics):
        _check_identifier(metric, f"config.compile.metrics[{index}]", label)


def _check_identifier(value: Any, path: str, label: str) -> None:
    """A name, or ``{"class_name": str, "config": {...}}`` as the serialize functions write."""
    if isinstance(value, str):
        return
    if not isinstance(value, dict):
        raise ValueError(f"{label} field {path}: expected a name or an object with keys "
                         f"class_name, config, got {reprlib.repr(value)}")
    _config_field(value, "class_name", str, path, label)
    _config_field(value, "config", dict, path, label)


def _config_field(config: dict[str, Any], key: str, types: type | tuple[type, ...], path: str,
                  label: str) -> Any:
    """``config[key]``, required to exist and to be of ``types``."""
    if key not in config:
        raise ValueError(f"{label} field {path}.{key} is missing")
    value = config[key]
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ValueError(f"{label} field {path}.{key}: expected {names}, got "
                         f"{reprlib.repr(value)}")
    return value


def _config_size(config: dict[str, Any], key: str, path: str, label: str) -> int:
    """``config[key]``, required to be a positive int."""
    value = _config_field(config, key, int, path, label)
    if isinstance(value, bool) or value < 1:
        raise ValueError(f"{label} field {path}.{key}: expected a positive int, got "
                         f"{reprlib.repr(value)}")
    return value


def _registered_name(obj: Any) -> str:
    """Name under which ``load`` rebuilds ``obj``'s class; TypeError for any other class."""
    name = type(obj).__name__
    if name in REGISTRY:
        module_name, attribute = REGISTRY[name]
        if type(obj) is getattr(import_module(module_name), attribute):
            return name
    raise TypeError(f"obj: expected one of {sorted(REGISTRY)} (fastlstm models), got "
                    f"{type(obj).__module__}.{type(obj).__qualname__}")


def _read(path: str | os.PathLike[str], with_data: bool = True
          ) -> tuple[dict[str, _Entry], dict[str, str], dict[str, np.ndarray]]:
    """Validate the file's header against its size; return (entries, metadata, tensors).

    ``entries`` maps names to (dtype_code, shape, begin, end); ``tensors`` (names to arrays)
    is empty unless ``with_data``.
    """
    where = repr(os.fspath(path))
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        header_size = int.from_bytes(prefix, "little")
        # A safetensors header is a JSON object: its length is followed by "{". Only a file
        # that does not start so is sniffed for other formats (a valid or truncated header
        # length such as 896 = b"\x80\x03\0..." starts with the bytes a pickle starts with).
        if not (len(prefix) == 8 and header_size <= MAX_HEADER_BYTES and f.read(1) == b"{"):
            found = _foreign_format(f, prefix)
            if found is not None:
                raise ValueError(f"{where}: not a safetensors file (it is {found})")
        if len(prefix) < 8:
            raise ValueError(f"{where}: not a safetensors file (only {file_size} bytes, the "
                             f"8-byte header length is missing)")
        if header_size > MAX_HEADER_BYTES:
            raise ValueError(f"{where}: not a safetensors file (header length {header_size} "
                             f"bytes exceeds the {MAX_HEADER_BYTES}-byte limit)")
        if 8 + header_size > file_size:
            raise ValueError(f"{where}: truncated or not a safetensors file (header length "
                             f"{header_size} bytes, but the file has {file_size} bytes)")
        f.seek(8)
        raw_header = f.read(header_size)
        if len(raw_header) != header_size:
            raise ValueError(f"{where}: file shrank while being read")
        entries, metadata = _parse_header(raw_header, file_size - 8 - header_size, where)
        tensors = {}
        if with_data:
            data_start = 8 + header_size
            for name, (dtype, shape, begin, _) in entries.items():
                f.seek(data_start + begin)
                tensors[name] = _read_tensor(f, dtype, shape, where, name)
    return entries, metadata, tensors


def _foreign_format(f: BinaryIO, prefix: bytes) -> str | None:
    """Name the format of a file that is not safetensors and what reads it; None if unknown.

    Recognises ONNX models, pickles, zip archives (``torch.save``, Keras ``.keras``,
    NumPy ``.npz``), HDF5 (Keras ``.h5``) and NumPy ``.npy`` files.
    """
    if prefix[:4] == _ZIP_MAGIC:
        return _zip_format(f)
    if prefix == _HDF5_MAGIC:
        return ("an HDF5 file, as Keras' model.save('model.h5') writes; load it with Keras and "
                "copy the weights with set_weights(keras_model.get_weights()), or "
                "fastlstm.LSTM.from_keras(layer.get_weights()) for one LSTM layer")
    if prefix.startswith(_NPY_MAGIC):
        return ("a NumPy .npy array; read it with numpy.load(path) and pass the arrays to "
                "model.load_state_dict")
    if len(prefix) >= 3 and prefix[0] == _PICKLE_PROTOCOL_BYTE and 2 <= prefix[1] <= 5 \
            and prefix[2] in _PICKLE_OPCODES:
        return (f"a pickle, protocol {prefix[1]}, as pickle.dump or torch.save(..., "
                f"_use_new_zipfile_serialization=False) write; fastlstm never unpickles: "
                f"save the state_dict with safetensors.torch.save_file")
    if len(prefix) >= 3 and prefix[0] == _ONNX_IR_VERSION_TAG and 0 < prefix[1] < 0x80 \
            and prefix[2] in _ONNX_MODEL_TAGS:
        return ("an ONNX model; read it with fastlstm.onnx.from_onnx(path) "
                "(or fastlstm.LSTM.from_onnx(path))")
    return None


def _zip_format(f: BinaryIO) -> str:
    """Name the zip archive ``f`` by its entries: torch.save, Keras .keras or NumPy .npz."""
    f.seek(0)
    try:
        names = zipfile.ZipFile(f).namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        names = []
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return ("a zip archive, as written by torch.save; fastlstm never unpickles, convert it "
                "with safetensors.torch.save_file(torch.load(path), 'model.safetensors')")
    if "config.json" in names and "model.weights.h5" in names:
        return ("a Keras .keras archive; load it with keras.saving.load_model and copy the "
                "weights with set_weights(keras_model.get_weights())")
    if names and all(name.endswith(".npy") for name in names):
        return ("a NumPy .npz archive; read it with numpy.load(path) and pass the arrays to "
                "model.load_state_dict")
    return "a zip archive, not a safetensors file"


def _parse_header(raw_header: bytes, data_size: int, where: str
                  ) -> tuple[dict[str, _Entry], dict[str, str]]:
    """Validate the JSON header; return ({name: (dtype_code, shape, begin, end)}, metadata)."""
    if not raw_header.lstrip(b" ").startswith(b"{"):
        raise ValueError(f"{where}: not a safetensors file (the header is not a JSON object)")
    try:
        header = json.loads(raw_header.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, duplicate keys, deep nesting
        raise ValueError(f"{where}: invalid safetensors header ({exc!s:.200})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: invalid safetensors header (expected a JSON object, got "
                         f"{type(header).__name__})")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"{where}: invalid safetensors header ('__metadata__' must map str -> "
                         f"str, got {metadata!r:.200})")
    entries = {name: _parse_entry(name, entry, where) for name, entry in header.items()}
    end = 0
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != end:
            problem = "overlaps the previous tensor" if begin < end else "leaves a gap before it"
            raise ValueError(f"{where}: tensor {name!r} data_offsets [{begin}, {stop}] {problem} "
                             f"(previous data ends at {end})")
        end = stop
    if end != data_size:
        raise ValueError(f"{where}: tensor data occupies {end} bytes but the file holds "
                         f"{data_size} bytes after the header (truncated or padded file)")
    return entries, metadata


def _parse_entry(name: str, entry: Any, where: str) -> _Entry:
    """Validate one tensor's header entry; return (dtype_code, shape, begin, end)."""
    label = f"{where}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"{label}: expected an object with keys dtype, shape, data_offsets, "
                         f"got {entry!r:.200}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(f"{label}: unsupported dtype {dtype!r:.50}, expected one of "
                         f"{sorted(_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise ValueError(f"{label}: shape must be a list of non-negative integers, got "
                         f"{shape!r:.200}")
    if len(shape) > MAX_DIMS or math.prod(max(n, 1) for n in shape) * _DTYPES[dtype].itemsize \
            > np.iinfo(np.intp).max:
        raise ValueError(f"{label}: shape {shape!r:.200} is too large for an array")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets))
            or offsets[0] > offsets[1]):
        raise ValueError(f"{label}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                         f"got {offsets!r:.200}")
    nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise ValueError(f"{label}: data_offsets {offsets} span {offsets[1] - offsets[0]} "
                         f"bytes, but dtype {dtype} and shape {shape} need {nbytes}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _read_tensor(f: BufferedIOBase, dtype_code: str, shape: tuple[int, ...], where: str,
                 name: str) -> np.ndarray:
    """Read exactly one validated tensor from the current position of ``f``."""
    array = np.empty(shape, dtype=_DTYPES[dtype_code])
    buffer = array.reshape(-1).view(np.uint8)
    # (ignore: NumPy declares ndarray.__buffer__ for Python >= 3.12 only)
    if f.readinto(buffer) != buffer.size:  # type: ignore[arg-type]
        raise ValueError(f"{where}: tensor {name!r}: file shrank while being read")
    if dtype_code == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise _DuplicateKey(f"duplicate key {duplicate!r:.100}")
    return dict(pairs)
