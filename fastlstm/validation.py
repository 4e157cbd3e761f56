"""Checks at the edge of the public API: clear TypeError/ValueError naming the argument."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

FLOAT_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32),
                                          "float64": np.dtype(np.float64)}


def as_dtype(dtype: Any) -> np.dtype[Any]:
    """Return the np.dtype for "float32"/"float64" (or their NumPy/PyTorch spellings)."""
    name = getattr(dtype, "name", None) or str(dtype).replace("torch.", "")
    if isinstance(dtype, type) and issubclass(dtype, np.generic):
        name = np.dtype(dtype).name
    if name not in FLOAT_DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return FLOAT_DTYPES[name]


def as_real_array(value: Any, name: str, dtype: Any) -> np.ndarray:
    """Convert a real int/float array-like (NumPy, nested lists, PyTorch tensor) to ``dtype``.

    bool, complex, object and string data raise TypeError naming ``name``.
    """
    if type(value) is np.ndarray and value.dtype == dtype:     # the common case, first
        return value
    if value is None:
        raise TypeError(f"{name}: expected a real array-like, got None")
    if hasattr(value, "detach") and hasattr(value, "cpu"):   # a PyTorch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected a real array-like, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise TypeError(f"{name}: expected a real array-like, got {type(value).__name__} "
                        f"({error})") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers (int or float), got dtype "
                        f"{array.dtype} from {type(value).__name__}")
    return array.astype(dtype, copy=False)


def check_int(value: Any, name: str, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Return ``value`` as int, requiring an integral (non-bool) number in range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an int <= {maximum}, got {value}")
    return value


def check_float(value: Any, name: str, low: float, high: float, low_open: bool = False,
                high_open: bool = False) -> float:
    """Return ``value`` as float, requiring a real number in the given interval."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__} {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not np.isfinite(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}: expected a float in {interval}, got {value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` as bool, requiring a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)
