"""This machine's limits for the benchmark report: the float32 FMA peak and the L2 read
bandwidth (C in probe.h), each the best of :data:`TRIALS` runs."""
import math

cdef extern from "probe.h" nogil:
    double fl_fma_peak_gflops(int threads, double seconds)
    double fl_l2_read_gbps(double seconds)
    int fl_cpu_isa()

ISAS = ("portable", "avx2", "avx512")
TRIALS = 3


def isa():
    """The instruction set the probes run: one of :data:`ISAS`, the CPU's best."""
    return ISAS[fl_cpu_isa()]


def _check_seconds(seconds):
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds: expected a finite number > 0, got {seconds!r}")


def fma_peak_gflops(threads, seconds=0.2):
    """Float32 GFLOP/s of ``threads`` threads, each running 12 independent chains of vector
    FMAs on registers for ``seconds``: the best of :data:`TRIALS` runs.

    A build without OpenMP runs one thread whatever ``threads`` says.
    """
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
    _check_seconds(seconds)
    cdef int n = threads
    cdef double duration = seconds
    runs = []
    for _ in range(TRIALS):
        with nogil:
            peak = fl_fma_peak_gflops(n, duration)
        runs.append(peak)
    return max(runs)


def l2_read_gbps(seconds=0.1):
    """GB/s one thread reads while summing a 256 KiB buffer (inside L2) over and over for
    ``seconds``: the best of :data:`TRIALS` runs."""
    _check_seconds(seconds)
    cdef double duration = seconds
    runs = []
    for _ in range(TRIALS):
        with nogil:
            rate = fl_l2_read_gbps(duration)
        if rate < 0:
            raise MemoryError("l2_read_gbps: could not allocate its 256 KiB buffer")
        runs.append(rate)
    return max(runs)
