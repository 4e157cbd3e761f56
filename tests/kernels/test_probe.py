"""The machine probes of the benchmark report: the float32 FMA peak, the L2 read bandwidth
and the core-to-core round trip, run briefly (a few hundredths of a second each)."""
import math
import os
import threading
import time

import pytest

from fastlstm._kernels import lstm, probe

SECONDS = 0.01   # per trial: the figures are rough, the test stays fast


@pytest.mark.parametrize("threads", [1, 2])
def test_fma_peak_is_a_positive_rate_measured_quickly(threads):
    started = time.perf_counter()
    gflops = probe.fma_peak_gflops(threads, SECONDS)
    elapsed = time.perf_counter() - started
    print(f"{probe.isa()}: {gflops:.1f} GFLOP/s on {threads} threads in {elapsed:.3f} s")
    assert math.isfinite(gflops) and gflops > 0
    assert elapsed < 2.0


def test_l2_read_bandwidth_is_a_positive_rate_measured_quickly():
    started = time.perf_counter()
    gbps = probe.l2_read_gbps(SECONDS)
    elapsed = time.perf_counter() - started
    print(f"{probe.isa()}: {gbps:.1f} GB/s in {elapsed:.3f} s")
    assert math.isfinite(gbps) and gbps > 0
    assert elapsed < 2.0


def _stolen_jiffies():
    """The time the hypervisor ran something else on this machine's CPUs (the steal
    column of /proc/stat), or 0 where there is no such count."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return 0
    return int(fields[8]) if len(fields) > 8 else 0


def test_core_round_trip_is_a_positive_time_measured_quickly():
    """Two OpenMP threads pass a cache line back and forth (the build has OpenMP: CI checks
    it); a round trip takes more than a nanosecond and, the fastest chunk of trips being
    reported, far less than a time slice, unless the hypervisor took a CPU away throughout
    (seen on a 2-vCPU guest: 4 ms, one trip a host time slice)."""
    stolen = _stolen_jiffies()
    started = time.perf_counter()
    trip = probe.core_round_trip_ns(SECONDS)
    elapsed = time.perf_counter() - started
    stolen = _stolen_jiffies() - stolen
    print(f"core-to-core round trip {trip:.0f} ns, measured in {elapsed:.3f} s "
          f"({stolen} jiffies stolen by the host)")
    assert trip is not None and 1 < trip < elapsed * 1e9
    assert trip < 1e6 or stolen > 0
    assert elapsed < 2.0


@pytest.mark.skipif(not os.path.exists("/proc/self/task"),
                    reason="thread CPU times come from Linux /proc")
def test_the_probes_wait_until_the_other_threads_stop_running():
    stop = threading.Event()

    def spin(seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, args=(10.0,))
    spinner.start()
    try:
        assert probe.wait_until_quiet(timeout=0.15) is False    # it never stops in time
    finally:
        stop.set()
        spinner.join()
    stop.clear()
    spinner = threading.Thread(target=spin, args=(0.15,))
    started = time.perf_counter()
    spinner.start()
    assert probe.wait_until_quiet(timeout=2.0) is True
    assert time.perf_counter() - started >= 0.15 and not spinner.is_alive()
    spinner.join()


def test_the_probes_run_the_best_instruction_set_of_the_cpu():
    assert probe.isa() == lstm.supported_isas()[-1]


@pytest.mark.parametrize("call, message", [
    (lambda: probe.fma_peak_gflops(0), "threads: expected an int >= 1, got 0"),
    (lambda: probe.fma_peak_gflops(1.5), "threads: expected an int >= 1, got 1.5"),
    (lambda: probe.fma_peak_gflops(1, 0), "seconds: expected a finite number > 0, got 0"),
    (lambda: probe.l2_read_gbps(float("nan")), "seconds: expected a finite number > 0, got nan"),
    (lambda: probe.core_round_trip_ns(-1), "seconds: expected a finite number > 0, got -1"),
])
def test_probes_reject_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
