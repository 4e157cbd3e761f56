"""OpenMP facts for Python: whether the build has OpenMP and the runtime's thread limit."""


def openmp_enabled():
    """Return True if the kernels were compiled with OpenMP."""
    return bool(fl_openmp_enabled())


def max_threads():
    """Return ``omp_get_max_threads()`` for the calling thread (1 without OpenMP).

    It reflects ``OMP_NUM_THREADS`` and threadpoolctl's OpenMP limits.
    """
    return fl_omp_max_threads()
