# cython: language_level=3
"""Uninitialised arrays whose data start on a cache line, made through NumPy's C API.

Every call of a layer allocates a few of them (its output and states), so their cost is
part of each call's fixed cost: a fraction of a microsecond here, against 2.4 us for
over-allocating a NumPy array and slicing it at the aligned offset in Python.
"""
cimport numpy as cnp

import numpy as np

cnp.import_array()

cdef enum:
    ALIGNMENT = 64      # bytes: whole cache lines, so vector stores of a row never split two
    MAX_DIMS = 32


def aligned_empty(shape, dtype):
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary.

    Parameters
    ----------
    shape : int or tuple of int
    dtype : dtype-like
        A numeric type in native byte order.
    """
    cdef cnp.dtype descr = np.dtype(dtype)
    cdef tuple dims_in = shape if isinstance(shape, tuple) else (shape,)
    cdef cnp.npy_intp dims[MAX_DIMS]
    cdef cnp.npy_intp count = 1
    cdef cnp.npy_intp raw_size[1]
    cdef int nd = len(dims_in), i
    cdef char* data
    if nd > MAX_DIMS:
        raise ValueError(f"shape: expected at most {MAX_DIMS} dimensions, got {nd}")
    if not descr.isnative or descr.type_num >= cnp.NPY_OBJECT:
        raise TypeError(f"dtype: expected a numeric type in native byte order, got {descr}")
    for i in range(nd):
        dims[i] = dims_in[i]
        if dims[i] < 0:
            raise ValueError(f"shape: expected sizes >= 0, got {shape}")
        if dims[i] > 0 and count > (<cnp.npy_intp>1 << 62) // dims[i] // descr.itemsize:
            raise MemoryError(f"shape: {shape} of {descr} does not fit in memory")
        count *= dims[i]
    raw_size[0] = count * descr.itemsize + ALIGNMENT
    cdef cnp.ndarray raw = cnp.PyArray_EMPTY(1, raw_size, cnp.NPY_UINT8, 0)
    data = <char*>cnp.PyArray_DATA(raw)
    data += (ALIGNMENT - <size_t>data % ALIGNMENT) % ALIGNMENT
    cdef cnp.ndarray array = cnp.PyArray_SimpleNewFromData(nd, dims, descr.type_num, data)
    cnp.set_array_base(array, raw)
    return array
