"""OpenMP facts for Python (whether the build has OpenMP, the runtime's thread limit) and
the kernels' thread count, kept in C so that a stream step reads it without Python."""


def openmp_enabled():
    """Return True if the kernels were compiled with OpenMP."""
    return bool(fl_openmp_enabled())


def max_threads():
    """Return ``omp_get_max_threads()`` for the calling thread (1 without OpenMP).

    It reflects ``OMP_NUM_THREADS`` and threadpoolctl's OpenMP limits.
    """
    return fl_omp_max_threads()


cdef int _requested = 0         # fastlstm.set_num_threads' setting; 0: the default
cdef int _usable_cores = 1


def set_threads(int requested, int usable_cores):
    """Record ``fastlstm.set_num_threads``' setting (0: the default) and the usable cores."""
    global _requested, _usable_cores
    if requested < 0 or usable_cores < 1:
        raise ValueError(f"set_threads: expected requested >= 0 and usable_cores >= 1, got "
                         f"{requested} and {usable_cores}")
    _requested, _usable_cores = requested, usable_cores


def requested_threads():
    """``fastlstm.set_num_threads``' setting: a count, or 0 for the default."""
    return _requested


def threads():
    """The threads the next kernel call uses (:func:`fastlstm.get_num_threads`)."""
    return kernel_threads()


cdef int kernel_threads() noexcept nogil:
    # the setting capped by the usable cores, or the usable cores capped by OpenMP's limit
    # (OMP_NUM_THREADS, threadpoolctl); 1 without OpenMP
    if not fl_openmp_enabled():
        return 1
    if _requested > 0:
        return min(_requested, _usable_cores)
    return max(1, min(_usable_cores, fl_omp_max_threads()))


cdef fl_shared_t* shared_state() noexcept nogil:
    # the stall handling every module shares: this module's own copy (fl_share)
    return fl_own_state()


def shared_state_address():
    """Address of the stall handling's state as this module sees it (tests: one per
    process)."""
    return fl_shared_address()
