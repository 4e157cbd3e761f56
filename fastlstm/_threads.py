"""The thread count the kernels use: a user setting capped by the usable cores."""
from __future__ import annotations

import functools
import os

from ._kernels import openmp as _openmp
from .validation import check_int

_requested: int | None = None


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
    global _requested
    _requested = None if n is None else check_int(n, "n", minimum=1)


def get_num_threads() -> int:
    """Threads the next kernel call uses.

    Without :func:`set_num_threads` this is the usable cores, limited by
    ``OMP_NUM_THREADS`` and threadpoolctl's OpenMP limits; 1 in a build without OpenMP.
    """
    if not _openmp.openmp_enabled():
        return 1
    if _requested is not None:
        return min(_requested, usable_cores())
    return max(1, min(usable_cores(), _openmp.max_threads()))
