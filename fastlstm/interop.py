"""Build a fastlstm.LSTM from Keras LSTM weights (no Keras or TensorFlow needed).

Keras stores an LSTM layer as ``kernel`` (in, 4H), ``recurrent_kernel`` (H, 4H) and one
``bias`` (4H,), gate columns in the order i, f, c, o, which is PyTorch's i, f, g, o. So
``weight_ih = kernel.T``, ``weight_hh = recurrent_kernel.T``, ``bias_ih = bias`` and
``bias_hh = 0``. The layer must use Keras' default activations (``tanh``, recurrent
``sigmoid``); the weights alone cannot tell.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from .lstm import LSTM

# number of arrays -> (bidirectional, bias)
_LAYOUTS: dict[int, tuple[bool, bool]] = {2: (False, False), 3: (False, True), 4: (True, False),
                                          6: (True, True)}


def from_keras(weights: Sequence[npt.ArrayLike], *, dtype: Any = None) -> LSTM:
    """Convert ``layer.get_weights()`` of a Keras LSTM (or Bidirectional LSTM) layer.

    Parameters
    ----------
    weights : sequence of array-likes
        ``[kernel, recurrent_kernel, bias]`` of an LSTM layer, or the 6 arrays of a
        ``Bidirectional(LSTM(...))`` layer (forward layer's 3, then backward layer's 3);
        layers built with ``use_bias=False`` give 2 (or 4) arrays.
    dtype : {"float32", "float64"}, optional
        Defaults to float64 if the kernel is a float64 array, else float32.

    Returns
    -------
    LSTM
        A new ``batch_first=True`` module in train mode computing what the Keras layer does
        (``return_sequences=True, return_state=True``; Bidirectional with
        ``merge_mode="concat"``).
    """
    from .lstm import LSTM

    if isinstance(weights, (str, bytes, dict, np.ndarray)) or not hasattr(weights, "__len__"):
        raise TypeError(f"weights: expected a list of arrays as returned by Keras' "
                        f"layer.get_weights(), got {type(weights).__name__}")
    if len(weights) not in _LAYOUTS:
        raise ValueError(f"weights: expected 3 arrays [kernel, recurrent_kernel, bias] (6 for a "
                         f"Bidirectional layer; 2 or 4 without bias), got {len(weights)}")
    bidirectional, bias = _LAYOUTS[len(weights)]
    per_direction = len(weights) // (2 if bidirectional else 1)
    arrays = [_as_float_array(w, i) for i, w in enumerate(weights)]
    input_size, hidden_size = _check_shapes(arrays[:per_direction], 0)
    if bidirectional:
        shapes = _check_shapes(arrays[per_direction:], per_direction)
        if shapes != (input_size, hidden_size):
            raise ValueError(f"weights: backward layer has input size {shapes[0]} and {shapes[1]} "
                             f"units, forward layer {input_size} and {hidden_size}")
    if dtype is None:  # nested lists of Python floats are not float64 weights
        float64_kernel = hasattr(weights[0], "dtype") and arrays[0].dtype == np.float64
        dtype = "float64" if float64_kernel else "float32"
    module = LSTM(input_size, hidden_size, bias=bias, batch_first=True,
                  bidirectional=bidirectional, dtype=dtype)
    state = {}
    for direction, suffix in enumerate(("", "_reverse")[:2 if bidirectional else 1]):
        kernel, recurrent_kernel, *rest = arrays[direction * per_direction:][:per_direction]
        state[f"weight_ih_l0{suffix}"] = kernel.T
        state[f"weight_hh_l0{suffix}"] = recurrent_kernel.T
        if bias:
            state[f"bias_ih_l0{suffix}"] = rest[0]
            state[f"bias_hh_l0{suffix}"] = np.zeros_like(rest[0])
    module.load_state_dict(state)
    return module


def _as_float_array(value: npt.ArrayLike, index: int) -> np.ndarray:
    """``weights[index]`` as a real floating or integer NumPy array (TypeError otherwise)."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"weights[{index}]: expected a real numeric array, got dtype {array.dtype}")
    return array


def _check_shapes(arrays: Sequence[np.ndarray], first_index: int) -> tuple[int, int]:
    """Validate one direction's [kernel, recurrent_kernel(, bias)]; return (input_size, H)."""
    kernel, recurrent_kernel, *rest = arrays
    if recurrent_kernel.ndim != 2 or recurrent_kernel.shape[1] != 4 * recurrent_kernel.shape[0] \
            or recurrent_kernel.shape[0] == 0:
        raise ValueError(f"weights[{first_index + 1}] (recurrent_kernel): expected shape (units, "
                         f"4 * units), got {recurrent_kernel.shape}")
    hidden_size = recurrent_kernel.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != 4 * hidden_size or kernel.shape[0] == 0:
        raise ValueError(f"weights[{first_index}] (kernel): expected shape (input_size, "
                         f"{4 * hidden_size}), got {kernel.shape}")
    if rest and rest[0].shape != (4 * hidden_size,):
        raise ValueError(f"weights[{first_index + 2}] (bias): expected shape "
                         f"({4 * hidden_size},), got {rest[0].shape}")
    return kernel.shape[0], hidden_size
