"""aligned_empty: C-contiguous, writable arrays on cache-line boundaries, or a clear error."""
import gc

import numpy as np
import pytest

from fastlstm._kernels.arrays import aligned_empty


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.intp, "float32"])
@pytest.mark.parametrize("shape", [7, (), (0,), (3, 0, 2), (1, 1, 128), (5, 17), (2, 3, 4, 5)])
def test_aligned_empty_is_an_aligned_writable_c_array(shape, dtype):
    array = aligned_empty(shape, dtype)
    expected_shape = shape if isinstance(shape, tuple) else (shape,)
    assert array.shape == expected_shape and array.dtype == np.dtype(dtype)
    assert array.flags.c_contiguous and array.flags.writeable
    assert array.ctypes.data % 64 == 0
    array[...] = 1
    assert np.all(array == 1)


def test_aligned_empty_keeps_its_memory_alive():
    arrays = [aligned_empty((100, 33), np.float64) for _ in range(10)]
    for i, array in enumerate(arrays):
        array.fill(i)
    gc.collect()
    clutter = [np.ones(100 * 33 + 8) for _ in range(10)]
    assert all(np.all(array == i) for i, array in enumerate(arrays)) and clutter


@pytest.mark.parametrize("shape, error, message", [
    ((-1,), ValueError, "sizes >= 0"), (-3, ValueError, "sizes >= 0"),
    ((2 ** 40, 2 ** 40), MemoryError, "does not fit"), ((1,) * 33, ValueError, "at most 32"),
    ("x", TypeError, "integer")])
def test_aligned_empty_rejects_bad_shapes(shape, error, message):
    with pytest.raises(error, match=message):
        aligned_empty(shape, np.float32)


@pytest.mark.parametrize("dtype", [">f4" if np.little_endian else "<f4", object, "U3"])
def test_aligned_empty_rejects_non_numeric_or_foreign_byte_order(dtype):
    with pytest.raises(TypeError, match="numeric type in native byte order"):
        aligned_empty(3, dtype)
