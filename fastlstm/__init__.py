"""fastlstm: a fast CPU LSTM for Python.

The core is :class:`fastlstm.LSTM`, shaped like PyTorch's ``nn.LSTM`` but holding its
parameters as NumPy arrays and running Cython kernels. Keras-style models live in
:mod:`fastlstm.layers` and :class:`fastlstm.Sequential`; optional parts (ONNX, safetensors,
scikit-learn) are imported only when used.
"""
from importlib import import_module

from ._threads import get_num_threads, set_num_threads
from .lstm import LSTM

__version__ = "0.1.0"

# name -> module that defines it; imported on first access to keep `import fastlstm` light.
_LAZY = {
    "save": "io", "load": "io", "quantize": "quantized",
    "Sequential": "models", "load_model": "models",
    "Linear": "modules", "Embedding": "modules", "Dropout": "modules", "Module": "modules",
}
_SUBMODULES = {"reference", "layers", "optim", "losses", "metrics", "callbacks", "sklearn",
               "io", "onnx", "models", "modules", "quantized"}

__all__ = ["LSTM", "get_num_threads", "set_num_threads", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastlstm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
