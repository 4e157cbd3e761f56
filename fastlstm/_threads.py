"""Threads: the kernels' count (a user setting capped by the usable cores) and the OpenBLAS
pools of NumPy and SciPy, held to one thread while fastlstm works."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

from ._kernels import openmp as _openmp
from .validation import check_int

# Wheels bundle OpenBLAS in "<package>.libs" beside the package; its thread controls may
# carry a prefix and a suffix (scipy-openblas64: scipy_openblas_set_num_threads64_).
_BLAS_PACKAGES = ("numpy", "scipy")
_SYMBOL_PREFIXES = ("scipy_", "")
_SYMBOL_SUFFIXES = ("", "64_", "_64")

_blas_lock = threading.Lock()
_blas_users = 0                 # open single_threaded_blas blocks, in all Python threads
_blas_saved: list[int] = []     # each pool's thread count before the first of them


@functools.lru_cache(maxsize=None)
def usable_cores() -> int:
    """Cores this process may run on: CPU affinity and the cgroup CPU quota (read once)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def set_num_threads(n: int | None) -> None:
    """Set the number of threads the kernels use (capped at the usable cores).

    ``None`` goes back to the default: the usable cores, limited by ``OMP_NUM_THREADS``
    and threadpoolctl's OpenMP limits.
    """
    _openmp.set_threads(0 if n is None else check_int(n, "n", minimum=1), usable_cores())


def requested_threads() -> int | None:
    """The count given to :func:`set_num_threads`, or None for the default."""
    return _openmp.requested_threads() or None


def get_num_threads() -> int:
    """Threads the next kernel call uses.

    Without :func:`set_num_threads` this is the usable cores, limited by
    ``OMP_NUM_THREADS`` and threadpoolctl's OpenMP limits; 1 in a build without OpenMP.
    (The kernels read the same setting in C.)
    """
    return _openmp.threads()


set_num_threads(None)   # the kernels' C copy of the setting starts at the default


class BlasPool(NamedTuple):
    """The thread-count controls of one loaded OpenBLAS."""

    get_threads: Callable[[], int]
    set_threads: Callable[[int], None]


def _bundled_openblas(package: str) -> list[str]:
    """Paths of the OpenBLAS libraries bundled in ``<package>.libs`` (none if absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    package_dir = next(iter(spec.submodule_search_locations))
    libs = os.path.join(os.path.dirname(package_dir), f"{package}.libs")
    if not os.path.isdir(libs):
        return []
    return [os.path.join(libs, name) for name in sorted(os.listdir(libs)) if "openblas" in name]


def _openblas_pool(path: str) -> BlasPool | None:
    """The thread controls of the OpenBLAS at ``path``; None if it has none or fails to load."""
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return None
    for prefix in _SYMBOL_PREFIXES:
        for suffix in _SYMBOL_SUFFIXES:
            getter = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
            setter = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
            if getter is not None and setter is not None:
                getter.restype, getter.argtypes = ctypes.c_int, []
                setter.restype, setter.argtypes = None, [ctypes.c_int]
                return BlasPool(getter, setter)
    return None


@functools.lru_cache(maxsize=None)
def blas_pools() -> tuple[BlasPool, ...]:
    """The OpenBLAS pools bundled with NumPy and SciPy (found on first use)."""
    paths = [path for package in _BLAS_PACKAGES for path in _bundled_openblas(package)]
    return tuple(pool for pool in map(_openblas_pool, paths) if pool is not None)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Hold the OpenBLAS pools of NumPy and SciPy to one thread inside the block.

    fastlstm's OpenMP threads own the cores; an OpenBLAS pool running products on several
    threads spins after each and slows them down. Blocks may nest and run in several Python
    threads at once: the first to enter saves the thread counts, the last to leave restores
    them. A no-op where NumPy and SciPy bring no OpenBLAS of their own.
    """
    _hold_blas()
    try:
        yield
    finally:
        _release_blas()


def _hold_blas() -> None:
    """Enter a block: the first one in saves each pool's thread count and sets it to one."""
    global _blas_users
    with _blas_lock:
        if _blas_users == 0:
            pools = blas_pools()
            _blas_saved[:] = [pool.get_threads() for pool in pools]
            for pool, count in zip(pools, _blas_saved):
                if count != 1:
                    pool.set_threads(1)
        _blas_users += 1


def _release_blas() -> None:
    """Leave a block: the last one out restores the saved thread counts."""
    global _blas_users
    with _blas_lock:
        _blas_users -= 1
        if _blas_users == 0:
            for pool, count in zip(blas_pools(), _blas_saved):
                if pool.get_threads() != count:
                    pool.set_threads(count)
