"""This machine's limits for the benchmark report: the float32 FMA peak, the L2 read
bandwidth and the core-to-core round trip (C in probe.h), each the best of :data:`TRIALS`
runs. Each waits first until the process's other threads are idle (:func:`wait_until_quiet`)."""
import math
import os
import threading
import time

cdef extern from "probe.h" nogil:
    double fl_fma_peak_gflops(int threads, double seconds)
    double fl_l2_read_gbps(double seconds)
    double fl_core_round_trip_ns(double seconds)
    int fl_cpu_isa()

ISAS = ("portable", "avx2", "avx512")
TRIALS = 3
QUIET_WINDOW_S = 0.02       # idle for this long (5 scheduler ticks): another ran < 10 % of it


def _other_threads_cpu_ns():
    """CPU nanoseconds each other thread of this process has run (Linux schedstat; empty
    where there is none)."""
    own = str(threading.get_native_id())
    times = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return times
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/schedstat") as f:
                times[task] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    times.pop(own, None)
    return times


def wait_until_quiet(timeout=1.0):
    """Wait, up to ``timeout`` seconds, until no other thread of this process runs: the
    OpenBLAS that ``import numpy`` loads spins its pool for about 0.1 s, which would share
    the cores with a probe. Returns whether they went quiet."""
    _check_seconds(timeout)
    deadline = time.monotonic() + timeout
    before = _other_threads_cpu_ns()
    while time.monotonic() < deadline:
        time.sleep(QUIET_WINDOW_S)
        after = _other_threads_cpu_ns()
        ran_ns = [ns - before.get(task, ns) for task, ns in after.items()]
        if all(ran < 0.1 * QUIET_WINDOW_S * 1e9 for ran in ran_ns):
            return True
        before = after
    return False


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
    wait_until_quiet()
    cdef int n = threads
    cdef double duration = seconds
    runs = []
    for _ in range(TRIALS):
        with nogil:
            peak = fl_fma_peak_gflops(n, duration)
        runs.append(peak)
    return max(runs)


ctypedef double (*probe_fn)(double seconds) noexcept nogil


cdef list _trials(probe_fn run, double seconds):
    """The results of :data:`TRIALS` calls of ``run(seconds)``, without the GIL."""
    cdef double result
    runs = []
    for _ in range(TRIALS):
        with nogil:
            result = run(seconds)
        runs.append(result)
    return runs


def l2_read_gbps(seconds=0.1):
    """GB/s one thread reads while summing a 256 KiB buffer (inside L2) over and over for
    ``seconds``: the best of :data:`TRIALS` runs."""
    _check_seconds(seconds)
    wait_until_quiet()
    runs = _trials(fl_l2_read_gbps, seconds)
    if min(runs) < 0:
        raise MemoryError("l2_read_gbps: could not allocate its 256 KiB buffer")
    return max(runs)


def core_round_trip_ns(seconds=0.05):
    """Nanoseconds for one cache line to go from one thread to another and back (two
    OpenMP threads passing a counter for ``seconds``, timed in chunks of 64 trips of which
    the fastest counts, so a thread losing its CPU does not): the best of :data:`TRIALS`
    runs, or None without a second thread (a build without OpenMP). It bounds how fast threads can
    meet at a barrier or hand each other a hidden state. A run in which no trip completed
    (both threads on one core) is run again, up to :data:`TRIALS` times over."""
    _check_seconds(seconds)
    wait_until_quiet()
    cdef double duration = seconds, ns
    runs = []
    for _ in range(TRIALS * (TRIALS + 1)):
        with nogil:
            ns = fl_core_round_trip_ns(duration)
        if ns < 0:
            return None
        if ns > 0:
            runs.append(ns)
        if len(runs) == TRIALS:
            break
    return min(runs) if runs else None
