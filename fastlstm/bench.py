"""Side-by-side benchmark of fastlstm against NumPy, PyTorch and ONNX Runtime.

Every (framework, case) runs in a fresh process (:mod:`fastlstm._bench_worker`) with the
same thread count, set both through the environment (``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``) and through each framework's own setting,
or with "default" threads: none of these set, each framework's own choice. The
measurements compared with each other (the frameworks of a case, and fastlstm at its other
thread counts on it) run in rounds, four by default (two with ``quick``): in the order
given, then reversed, and so on (A B C D, D C B A, A B C D, D C B A), each process kept
for its next round, warming up anew and taking its share of the repeats, so a slow phase
of a noisy machine weighs on all of them alike. Results are medians of the samples of all
rounds after warm-ups that last until the timings settle; results.json keeps each round's
median and the notes name those more than 10% apart. For each case the report gives the
time of every framework, the speedup of fastlstm over each peer (peer time / fastlstm
time, > 1 means fastlstm is faster), fastlstm's GFLOP/s, its fraction of this machine's
float32 FMA peak (measured once per run, with one core's L2 read bandwidth, by
:mod:`fastlstm._kernels.probe` in a process of its own) and of the throughput of one
float32 sgemm of the same FLOPs timed in the same run; then the thread scaling, one
training epoch of a char-LM (``Sequential.fit`` against PyTorch) and, on request, the same
under competing CPU load. A peer that is not installed is reported ``absent``; one that
fails is reported ``error`` and the run goes on.

Peers that are not installed are left out of a default run, with a note saying how to add
them: the benchmark needs only NumPy (and ONNX Runtime for its column); PyTorch's rows
appear when ``torch`` is importable.

``--dtype bfloat16`` or ``int8`` measures reduced-precision inference instead: S1 and S3
forward and the S1 streaming step (full adds S3's) of ``fl.quantize`` beside PyTorch's
bfloat16 module or ``quantize_dynamic`` int8 LSTM and ONNX Runtime's ``DynamicQuantizeLSTM``
(int8), after the float32 rows of fastlstm and PyTorch on the same cases.

Usage: ``python -m fastlstm bench [--quick] [--busy N] [--dtype D] [--rounds N]`` (see
``fastlstm bench --help``), or :func:`plan`, :func:`run` and :func:`write_report` from Python.
"""
import importlib.util
import json
import math
import os
import platform
import resource
import select
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from typing import Any, Callable, Iterable, Iterator, Sequence

from ._bench_worker import (CHARLM, DTYPES, FRAMEWORKS, MODES, RESULT_PREFIX, UNSUPPORTED, Case,
                             Timing, summary, unsupported)

Result = dict[str, Any]  # one framework on one case, as the worker reports it
Report = dict[str, Any]  # a whole run, as results.json stores it
# Quick stays near a minute: a shorter warm-up cap, a looser settling test, fewer repeats.
QUICK_TIMING = Timing(warmup_min_s=0.05, warmup_max_s=1.0, settle_window=3,
                      settle_tolerance=0.05, budget_s=0.3, min_repeats=3, max_repeats=100)
FULL_TIMING = Timing()
WORKER_TIMEOUT_S = 300
# The worker runs as a script, not as `-m fastlstm._bench_worker`, so that importing it does
# not import the fastlstm package: a peer's process then holds the peer alone, not fastlstm's
# compiled modules, SciPy's OpenBLAS and the system libgomp (which PyTorch would bind to
# instead of its own).
WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bench_worker.py")
WORKER_BOOTSTRAP = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
PEERS = tuple(f for f in FRAMEWORKS if f != "fastlstm")
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# What each peer's worker imports, and how to install it (PyTorch: its CPU-only build).
PEER_MODULES = {"torch": ("torch",), "onnxruntime": ("onnxruntime", "onnx")}
PEER_INSTALL = {"torch": "pip install torch --index-url https://download.pytorch.org/whl/cpu",
                "onnxruntime": "pip install onnx onnxruntime"}
# Other processes keeping more cores than this busy during a measurement make it noisy.
NOISY_CORES = 0.2
# Competing CPU load: each spinner is a pure spin loop that also exits once its parent
# (this process, whose pid it gets as argument) is gone, so none outlives a killed run.
SPINNER = ("import os, sys\n"
           "parent = int(sys.argv[1])\n"
           "while os.getppid() == parent:\n"
           "    for _ in range(1_000_000):\n"
           "        pass\n")
# Goal under competing load: fastlstm with its default threads at most this many times
# slower than with 1 thread.
BUSY_GOAL = 1.3
# Rounds per case: the frameworks in the order given, then reversed, and so on (A B C D,
# D C B A, A B C D, D C B A), so a slow phase of the machine weighs on all of them alike.
# Two rounds let a spell of a minute or two on a shared host (1.3-1.5x on the Intel Xeon)
# fall on one framework's turns: its S3 forward against PyTorch read 1.45x in one full run
# and 0.96x in the next, the same kernels.
ROUNDS = 4
# --quick's rounds: a first look, not a figure to publish.
QUICK_ROUNDS = 2
# A measurement whose round medians differ by more than this (relative) gets a note.
DRIFT = 0.10
# The figures of each round kept in results.json beside the pooled ones.
ROUND_FIGURES = ("median_s", "q1_s", "q3_s", "mean_s", "repeats", "inner", "warmup_s",
                 "warmup_calls", "settled")
# This machine's limits (fastlstm._kernels.probe), measured at the start of a run in a
# process of its own: seconds per FMA-peak trial (the L2 trials take half, the core-to-core
# round trips a quarter), each the best of 3. The round trip is measured again at the end:
# on a virtual machine it moves with the host's placement of the virtual CPUs, and the
# threads' per-step barriers and hidden-state exchange with it.
PROBE_S = 0.2
PROBE_SCRIPT = ("import json, sys\n"
                "from fastlstm._kernels import probe\n"
                "threads, seconds = int(sys.argv[1]), float(sys.argv[2])\n"
                "trip = probe.core_round_trip_ns(seconds / 4) if threads > 1 else None\n"
                "print(json.dumps(dict(isa=probe.isa(), fma_peak_gflops={\n"
                "    n: probe.fma_peak_gflops(n, seconds) for n in sorted({1, threads})},\n"
                "    l2_read_gbps=probe.l2_read_gbps(seconds / 2), core_round_trip_ns=trip)))\n")
ROUND_TRIP_SCRIPT = ("import json, sys\n"
                     "from fastlstm._kernels import probe\n"
                     "print(json.dumps(dict(core_round_trip_ns=probe.core_round_trip_ns(\n"
                     "    float(sys.argv[2]) / 4) if int(sys.argv[1]) > 1 else None)))\n")

# The reference shapes of docs/performance.rst: (batch, seq_len, input_size, hidden_size)
S_SHAPES = {"S1": (1, 128, 32, 128), "S2": (16, 64, 64, 256), "S3": (64, 100, 256, 512)}
# Baidu DeepBench's inference LSTMs: input = hidden, H 128..1024, B 1..64, T 50..150.
DEEPBENCH_SHAPES = {"DB1": (1, 150, 128, 128), "DB2": (4, 150, 256, 256),
                    "DB3": (1, 100, 512, 512), "DB4": (64, 50, 512, 512),
                    "DB5": (4, 50, 1024, 1024), "DB6": (32, 50, 1024, 1024)}
FIT_FRAMEWORKS = tuple(f for f in FRAMEWORKS if (f, "fit") not in UNSUPPORTED)


def default_out_dir() -> str:
    """Where ``fastlstm bench`` writes without ``--out``: ``$XDG_CACHE_HOME/fastlstm/bench``,
    by default ``~/.cache/fastlstm/bench`` (never the working directory)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastlstm", "bench")


def missing_peers() -> dict[str, str]:
    """Peers whose modules are not importable here, each with the command that adds it.

    Looks the modules up without importing them (``importlib.util.find_spec``).
    """
    def importable(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):   # ValueError: sys.modules[module] is None
            return False
    return {peer: PEER_INSTALL[peer] for peer, modules in PEER_MODULES.items()
            if not all(importable(m) for m in modules)}


@dataclass(frozen=True)
class Entry:
    """One line of the plan: a case, the thread count (None: each framework's default), the
    frameworks to run on it, and how many competing spin processes run meanwhile."""

    case: Case
    threads: int | None
    frameworks: tuple[str, ...]
    busy: int = 0


def plan(quick: bool = False, threads: int = 2, frameworks: Iterable[str] = FRAMEWORKS,
         modes: Iterable[str] = MODES, busy: int = 0, dtype: str = "float32") -> list[Entry]:
    """The entries of a quick or full run, filtered to ``frameworks`` and ``modes``.

    Quick: S1-S3 forward and train, the S1 streaming step, one char-LM fit epoch (fastlstm
    and PyTorch). Full adds the S3 streaming step, 2-layer and bidirectional S2, the
    DeepBench-style grid (forward), fastlstm with its default threads on the fit and, when
    ``threads`` > 1, fastlstm with 1 thread on S3 forward, S3 train and the fit for the
    scaling figures. ``busy`` > 0 adds :func:`busy_entries`. ``dtype`` bfloat16 or int8
    plans :func:`quantized_entries` instead (``busy`` must then be 0).
    """
    chosen = _check_choices("frameworks", frameworks, FRAMEWORKS)
    modes = _check_choices("modes", modes, MODES)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
    if not isinstance(busy, int) or busy < 0:
        raise ValueError(f"busy: expected an int >= 0, got {busy!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    if dtype != "float32":
        if busy:
            raise ValueError(f"busy: expected 0 with dtype {dtype!r} (the busy section is "
                             f"float32), got {busy}")
        entries = quantized_entries(quick, threads, dtype)
        kept = [replace(e, frameworks=tuple(f for f in e.frameworks if f in chosen))
                for e in entries if e.case.mode in modes]
        return [e for e in kept if e.frameworks]
    entries = [Entry(c, threads, FRAMEWORKS) for c in _lstm_cases(quick)]
    entries.append(Entry(CHARLM, threads, FIT_FRAMEWORKS))
    if not quick:
        entries.append(Entry(CHARLM, None, ("fastlstm",)))
        if threads > 1:
            s3_steps = [Case("S3", mode, *S_SHAPES["S3"]) for mode in ("forward", "train")]
            entries += [Entry(c, 1, ("fastlstm",)) for c in (*s3_steps, CHARLM)]
    if busy:
        entries += busy_entries(busy)
    kept = [replace(e, frameworks=tuple(f for f in e.frameworks if f in chosen))
            for e in entries if e.case.mode in modes]
    return [e for e in kept if e.frameworks]


def _lstm_cases(quick: bool) -> list[Case]:
    """The LSTM cases of the main table: S1-S3 forward and train, S1 streaming; full adds
    S3 streaming, 2-layer and bidirectional S2 and the DeepBench-style grid."""
    cases = [Case(name, mode, *shape) for name, shape in S_SHAPES.items()
             for mode in ("forward", "train")]
    cases.append(Case("S1", "stream", 1, 1, 32, 128))
    if quick:
        return cases
    cases.append(Case("S3", "stream", 1, 1, 256, 512))
    for mode in ("forward", "train"):
        cases += [Case("S2-2layer", mode, *S_SHAPES["S2"], num_layers=2),
                  Case("S2-bidir", mode, *S_SHAPES["S2"], bidirectional=True)]
    return cases + [Case(name, "forward", *shape) for name, shape in DEEPBENCH_SHAPES.items()]


def quantized_entries(quick: bool, threads: int, dtype: str) -> list[Entry]:
    """S1 and S3 forward and the S1 streaming step (full adds S3's): first fastlstm and
    PyTorch in float32, then every framework with a ``dtype`` LSTM."""
    cases = [Case("S1", "forward", *S_SHAPES["S1"]), Case("S3", "forward", *S_SHAPES["S3"]),
             Case("S1", "stream", 1, 1, S_SHAPES["S1"][2], S_SHAPES["S1"][3])]
    if not quick:
        cases.append(Case("S3", "stream", 1, 1, S_SHAPES["S3"][2], S_SHAPES["S3"][3]))
    reduced = [replace(case, dtype=dtype) for case in cases]
    return ([Entry(case, threads, ("fastlstm", "torch")) for case in cases]
            + [Entry(case, threads, tuple(f for f in FRAMEWORKS if not unsupported(f, case)))
               for case in reduced])


def busy_entries(busy: int) -> list[Entry]:
    """S1-S3 forward and the char-LM fit under ``busy`` spinning processes: fastlstm and
    PyTorch with their default threads, fastlstm with 1 thread."""
    cases = [Case(name, "forward", *shape) for name, shape in S_SHAPES.items()] + [CHARLM]
    return [entry for case in cases for entry in (
        Entry(case, None, ("fastlstm", "torch"), busy), Entry(case, 1, ("fastlstm",), busy))]


def _check_choices(name: str, values: Iterable[str], allowed: Sequence[str]) -> list[str]:
    """``values`` as a list, if it is a non-empty subset of ``allowed``; else ValueError."""
    values = list(values)
    if not values or any(v not in allowed for v in values):
        raise ValueError(f"{name}: expected a non-empty subset of {list(allowed)}, got {values}")
    return values


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def competing_load(processes: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Keep ``processes`` CPU-bound spin loops (:data:`SPINNER`) running inside the block.

    All are killed and reaped on leaving it, by error or KeyboardInterrupt too.
    """
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            spinners.append(subprocess.Popen([sys.executable, "-c", SPINNER, str(os.getpid())],
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def worker_env(threads: int | None) -> dict[str, str]:
    """This process's environment with every :data:`THREAD_ENV` variable set to ``threads``,
    or, for None, removed (each framework then picks its own default)."""
    env = {name: value for name, value in os.environ.items() if name not in THREAD_ENV}
    return env if threads is None else dict(env, **{name: str(threads) for name in THREAD_ENV})


class Worker:
    """One framework on one case in a fresh process (:mod:`fastlstm._bench_worker`) that
    stays for more rounds: each :meth:`measure` call times it once, the first by starting the
    process, the next ones by asking it again. Close it (or use it as a context manager)
    to end the process.

    ``threads`` None leaves the thread count to the framework; ``busy`` spinners
    (:func:`competing_load`) run during each measurement; ``timeout`` bounds each one.
    """

    def __init__(self, framework: str, case: Case, threads: int | None, timing: Timing,
                 busy: int = 0, timeout: float = WORKER_TIMEOUT_S) -> None:
        self.framework, self.case, self.threads = framework, case, threads
        self.busy, self.timeout = busy, timeout
        self.spec = dict(framework=framework, case=asdict(case), threads=threads, busy=busy,
                         timing=asdict(timing))
        self.proc: subprocess.Popen[bytes] | None = None
        self.failure: Result | None = None      # why the process is gone, once it is
        self._stderr = tempfile.TemporaryFile()
        self._pending = b""                     # stdout read past the last result line

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def measure(self) -> Result:
        """One round: the worker's result, with ``other_cores``, how many cores processes
        other than the worker and its spinners kept busy, on average, meanwhile (None where
        /proc/stat is missing): above ~0.1 the figures are noisy."""
        reason = unsupported(self.framework, self.case)
        if reason:
            return dict(framework=self.framework, threads=self.threads, status="n/a",
                        message=reason)
        if self.failure:
            return self.failure
        busy_before, children_before = busy_cpu_seconds(), _children_cpu_seconds()
        started = time.perf_counter()
        # the spinners are reaped on leaving the block, so their CPU time counts as our children's
        with competing_load(self.busy):
            result = self._request()
        wall = time.perf_counter() - started
        busy_after, other_cores = busy_cpu_seconds(), None
        if busy_before is not None and busy_after is not None:
            others = (busy_after - busy_before - (_children_cpu_seconds() - children_before)
                      - result.pop("cpu_s", 0.0))
            other_cores = max(0.0, others / wall)
        return dict(result, other_cores=other_cores)

    def _request(self) -> Result:
        """Start the process or ask it for another round; its result, or an error saying
        why there is none (then :attr:`failure`)."""
        try:
            if self.proc is None:
                command = [sys.executable, "-c", WORKER_BOOTSTRAP, WORKER_PATH,
                           json.dumps(self.spec)]
                # run from the directory holding this fastlstm package, so the worker imports
                # the same one
                self.proc = subprocess.Popen(
                    command, env=worker_env(self.threads), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=self._stderr,
                    cwd=os.path.dirname(os.path.dirname(WORKER_PATH)))
            else:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"\n")
                self.proc.stdin.flush()
            result = self._read_result()
        except BrokenPipeError:
            result = None
        except subprocess.TimeoutExpired:
            return self._fail(f"timed out after {self.timeout} s")
        return result if result is not None else self._fail(self._exit_message())

    def _read_result(self) -> Result | None:
        """The next result line of the worker, or None if it exited first; TimeoutExpired
        after :attr:`timeout` seconds."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.timeout
        stdout = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(RESULT_PREFIX):
                    return json.loads(text[len(RESULT_PREFIX):])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([stdout], [], [], remaining)[0]:
                raise subprocess.TimeoutExpired(self.proc.args, self.timeout)
            chunk = os.read(stdout, 1 << 16)
            if not chunk:
                return None
            self._pending += chunk

    def _exit_message(self) -> str:
        """How the worker ended: its exit code and the last line of its stderr."""
        assert self.proc is not None
        code = self.proc.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read().decode(errors="replace").strip().splitlines()
        return f"worker exited with code {code}: {stderr[-1] if stderr else 'no output'}"

    def _fail(self, message: str) -> Result:
        """End the process; the error result every later round gets."""
        self.close()
        self.failure = dict(framework=self.framework, threads=self.threads, status="error",
                            message=message)
        return self.failure

    def close(self) -> None:
        """Let the process end (its input closes), killing it if it does not within 10 s."""
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def run_worker(framework: str, case: Case, threads: int | None, timing: Timing,
               busy: int = 0, timeout: float = WORKER_TIMEOUT_S) -> Result:
    """Measure one framework on one case once, in a fresh process (see :class:`Worker`)."""
    with Worker(framework, case, threads, timing, busy, timeout) as worker:
        return worker.measure()


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simd_flags() -> list[str]:
    """The vector instruction sets this CPU reports in /proc/cpuinfo (empty if unknown)."""
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None if it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, cores, load, library versions and the parent's threadpoolctl view."""
    import fastlstm
    from ._bench_worker import threadpools
    from ._threads import usable_cores
    return dict(
        cpu_model=cpu_model(), simd=simd_flags(), logical_cores=os.cpu_count(),
        usable_cores=usable_cores(), threads=threads, platform=platform.platform(),
        load_average=list(os.getloadavg()),
        versions=dict(python=platform.python_version(), fastlstm=fastlstm.__version__,
                      **{name: package_version(name) for name in (
                          "numpy", "scipy", "torch", "onnxruntime", "onnx", "threadpoolctl",
                          "matplotlib")}),
        threadpools=threadpools(),
        env={name: os.environ.get(name) for name in THREAD_ENV},
    )


def summarize(entry: Entry, results: dict[str, Result]) -> dict[str, Any]:
    """One report row: the case, each framework's result, speedups, GFLOP/s, sgemm share."""
    case = entry.case
    flops = case.flops()
    for result in results.values():
        if result["status"] == "ok" and flops is not None:
            result["gflops"] = flops / result["median_s"] / 1e9
    row: dict[str, Any] = dict(case=asdict(case), threads=entry.threads, busy=entry.busy,
                               flops=flops, results=results, speedup={}, gflops=None,
                               sgemm=None, fraction_of_sgemm=None)
    ours = results.get("fastlstm", {})
    if ours.get("sgemm"):
        sgemm = ours["sgemm"]
        row["sgemm"] = dict(sgemm, gflops=sgemm["flops"] / sgemm["median_s"] / 1e9)
    if ours.get("status") == "ok":
        row["gflops"] = ours.get("gflops")
        row["speedup"] = {peer: r["median_s"] / ours["median_s"]
                          for peer, r in results.items()
                          if peer != "fastlstm" and r["status"] == "ok"}
        if row["sgemm"]:
            row["fraction_of_sgemm"] = ours["gflops"] / row["sgemm"]["gflops"]
    return row


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def comparison_groups(entries: Sequence[Entry]) -> list[list[tuple[int, str]]]:
    """The measurements of ``entries``, (entry index, framework), grouped by case and
    competing load, in plan order: those compared with each other (a table row, the thread
    scaling, the fit and busy sections), which :func:`run` times round by round."""
    groups: dict[tuple[Case, int], list[tuple[int, str]]] = {}
    for index, entry in enumerate(entries):
        groups.setdefault((entry.case, entry.busy), []).extend(
            (index, framework) for framework in entry.frameworks)
    return list(groups.values())


def round_orders(items: Sequence[Any], rounds: int) -> list[list[Any]]:
    """The order of ``items`` in each of ``rounds`` rounds: as given, then reversed, and so
    on; a single item needs one round."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected an int >= 1, got {rounds!r}")
    return [list(items)[::-1 if r % 2 else 1] for r in range(1 if len(items) == 1 else rounds)]


def round_timing(timing: Timing, rounds: int) -> Timing:
    """``timing`` for one of ``rounds`` rounds: its time budget and repeat bounds shared out
    (rounded up), the warm-up unchanged."""
    return replace(timing, budget_s=timing.budget_s / rounds,
                   min_repeats=math.ceil(timing.min_repeats / rounds),
                   max_repeats=math.ceil(timing.max_repeats / rounds))


def pool_samples(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of the worker's ``measure`` as one: median, quartiles and extremes of all
    their samples, total repeats, whether every warm-up settled, and under ``rounds`` each
    round's own :data:`ROUND_FIGURES`."""
    samples = [sample for r in rounds for sample in r["samples_s"]]
    return dict(summary(samples), repeats=sum(r["repeats"] for r in rounds),
                settled=all(r["settled"] for r in rounds),
                rounds=[{key: r[key] for key in ROUND_FIGURES} for r in rounds])


def pool_rounds(rounds: Sequence[Result]) -> Result:
    """One measurement's result over its rounds (:func:`pool_samples`), fastlstm's sgemm
    pooled alike; ``other_cores`` is the most of any round. The first failed round's result
    if one failed."""
    failed = [r for r in rounds if r["status"] != "ok"]
    if failed:
        return failed[0]
    per_round = (*ROUND_FIGURES, "samples_s", "min_s", "max_s", "other_cores", "sgemm")
    pooled = {key: value for key, value in rounds[0].items() if key not in per_round}
    pooled.update(pool_samples(rounds))
    for figures, r in zip(pooled["rounds"], rounds):
        figures["other_cores"] = r["other_cores"]
    busy = [r["other_cores"] for r in rounds if r["other_cores"] is not None]
    pooled["other_cores"] = max(busy) if busy else None
    if "sgemm" in rounds[0]:
        sgemm = rounds[0]["sgemm"]
        pooled["sgemm"] = dict(shape=sgemm["shape"], flops=sgemm["flops"],
                               **pool_samples([r["sgemm"] for r in rounds]))
    return pooled


def machine_limits(threads: int, seconds: float = PROBE_S, timeout: float = WORKER_TIMEOUT_S,
                   script: str = PROBE_SCRIPT) -> dict[str, Any]:
    """This machine's float32 FMA peak on 1 and ``threads`` threads, one core's L2 read
    bandwidth and the core-to-core round trip (None on one thread)
    (:mod:`fastlstm._kernels.probe`, trials of ``seconds``), measured in a process of its
    own with the workers' thread environment; ``error`` says why not, if it failed.
    ``script``: :data:`ROUND_TRIP_SCRIPT` measures the round trip alone."""
    command = [sys.executable, "-c", script, str(threads), str(seconds)]
    try:
        proc = subprocess.run(command, env=worker_env(threads), capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(WORKER_PATH)),
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"the probe timed out after {timeout} s")
    if proc.returncode != 0:
        stderr = proc.stderr.strip().splitlines()
        return dict(error=f"the probe exited with code {proc.returncode}: "
                          f"{stderr[-1] if stderr else 'no output'}")
    return dict(json.loads(proc.stdout), seconds=seconds)


def measure_rounds(entries: Sequence[Entry], orders: Sequence[Sequence[tuple[int, str]]],
                   timing: Timing) -> Iterator[tuple[tuple[int, str], int, Result]]:
    """Time the measurements (entry index, framework) of one comparison group in the order
    of each round of ``orders``, each in a :class:`Worker` kept across the rounds; yield
    (measurement, round number, result) as each ends."""
    with ExitStack() as stack:
        workers = {(index, framework): stack.enter_context(Worker(
            framework, entries[index].case, entries[index].threads, timing, entries[index].busy))
            for index, framework in orders[0]}
        for number, order in enumerate(orders, 1):
            for measurement in order:
                yield measurement, number, workers[measurement].measure()


def run(entries: Sequence[Entry], timing: Timing = FULL_TIMING,
        log: Callable[[str], None] = _log, rounds: int = ROUNDS) -> Report:
    """Run every (framework, entry) in its own process, after :func:`machine_limits`;
    return the report dict.

    Each :func:`comparison_groups` group runs in ``rounds`` rounds (:func:`round_orders`),
    each round with :func:`round_timing`; :func:`pool_rounds` makes one result of them.
    """
    if not entries:
        raise ValueError("entries: expected at least one benchmark entry, got none")
    orders = [round_orders(group, rounds) for group in comparison_groups(entries)]
    started = time.time()
    threads = max((e.threads for e in entries if e.threads is not None), default=1)
    report: Report = dict(schema="fastlstm-bench/2",
                          started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), timing=asdict(timing),
                          rounds=rounds, machine=machine_info(threads), frameworks={}, rows=[])
    log(f"measuring this machine's limits ({threads} threads)")
    report["machine"]["limits"] = machine_limits(threads, PROBE_S)
    total = sum(len(order) for group_orders in orders for order in group_orders)
    done = 0
    pooled: dict[tuple[int, str], Result] = {}
    for group_orders in orders:
        measured: dict[tuple[int, str], list[Result]] = {m: [] for m in group_orders[0]}
        for (index, framework), number, result in measure_rounds(
                entries, group_orders, round_timing(timing, len(group_orders))):
            done += 1
            measured[(index, framework)].append(result)
            of_rounds = f", round {number}/{len(group_orders)}" if len(group_orders) > 1 else ""
            log(f"[{done:3d}/{total}] {_label(entries[index], framework)}{of_rounds}: "
                f"{_cell(result)}")
        for measurement, results in measured.items():
            pooled[measurement] = pool_rounds(results)
            _note_framework(report["frameworks"], pooled[measurement])
    for index, entry in enumerate(entries):
        report["rows"].append(summarize(entry, {f: pooled[(index, f)] for f in entry.frameworks}))
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["machine"]["round_trip_end"] = machine_limits(threads, PROBE_S,
                                                         script=ROUND_TRIP_SCRIPT)
    report["wall_time_s"] = time.time() - started
    return report


def _label(entry: Entry, framework: str) -> str:
    """A measurement as the progress log names it: case, mode, framework, threads, load."""
    load = f", {entry.busy} busy" if entry.busy else ""
    return (f"{entry.case.name} {entry.case.mode} {framework} "
            f"({_threads_label(entry.threads)} thr{load})")


def _note_framework(frameworks: dict[str, Result], result: Result) -> None:
    """Keep each framework's first informative status, version and threadpools."""
    name = result["framework"]
    seen = frameworks.get(name)
    if seen is None or (seen["status"] != "ok" and result["status"] == "ok"):
        frameworks[name] = {key: result.get(key) for key in
                            ("status", "message", "version", "threadpools")}


def format_time(seconds: float) -> str:
    """Seconds as a short string with a unit chosen for 3 significant digits."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _ratio(value: float) -> str:
    """A speedup as "0.532x", "2.09x" or "381x"."""
    return f"{value:.0f}x" if value >= 100 else f"{value:.3g}x"


def _threads_label(threads: int | None) -> str:
    return "default" if threads is None else str(threads)


def _noisy(result: Result) -> bool:
    return (result.get("other_cores") or 0.0) > NOISY_CORES


def _cell(result: Result | None) -> str:
    """Table cell of one framework: 'median ±spread%' (then * if the machine was busy) or
    its status; '—' for no result."""
    if result is None:
        return "—"
    status = result["status"]
    if status != "ok":
        return "error" if status == "error" else status
    spread = (result["q3_s"] - result["q1_s"]) / 2 / result["median_s"] * 100
    noisy = " *" if _noisy(result) else ""
    return f"{format_time(result['median_s'])} ±{spread:.0f}%{noisy}"


def _shape(case: dict[str, Any]) -> list[str]:
    layers = f"{case['num_layers']}x{2 if case['bidirectional'] else 1}"
    return [str(case[k]) for k in ("batch", "seq_len", "input_size", "hidden_size")] + [layers]


def _dtype(row: dict[str, Any]) -> str:
    """A row's dtype, with fastlstm's kernel path when it is reduced precision."""
    dtype = row["case"].get("dtype", "float32")
    path = row["results"].get("fastlstm", {}).get("kernel_path")
    return f"{dtype} ({path})" if path else dtype


def to_markdown(report: Report) -> str:
    """The report as Markdown: machine and its limits, the LSTM table, thread scaling, the
    fit epoch, the busy-machine section, notes."""
    machine, timing = report["machine"], report["timing"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    limits = machine.get("limits") or dict(error="not in this report")
    lines = [
        "# fastlstm benchmark", "",
        f"- CPU: {machine['cpu_model']} ({machine['usable_cores']} usable cores; "
        f"SIMD: {' '.join(machine['simd']) or 'unknown'})",
        f"- Limits of this machine, measured at the start: {_limits_text(limits)}",
        f"- Threads per framework: {machine['threads']}; load average at start "
        f"{machine['load_average'][0]:.2f}, at end {machine['load_average_end'][0]:.2f}"
        f"{_round_trip_end_text(machine.get('round_trip_end'))}",
        f"- Versions: {versions}",
        f"- Wall time: {report['wall_time_s']:.0f} s; "
        f"{', '.join(dict.fromkeys(_dtype(row).split()[0] for row in report['rows']))}; "
        "time-major; each framework in its own process", "",
        "Times are medians per call after a warm-up that runs until the median of the last "
        f"{timing['settle_window']} samples is within {timing['settle_tolerance']:.0%} of the "
        f"{timing['settle_window']} before (at least {timing['warmup_min_s']:g} s, at most "
        f"{timing['warmup_max_s']:g} s); ± is half the interquartile range as % of the median. "
        f"{_rounds_text(report.get('rounds', 1))} "
        "`vs X` = X's time / fastlstm's time (> 1: fastlstm faster). GFLOP/s counts "
        "2·T·B·4H·(in+H) per layer and direction (a training step as 3 forwards); `sgemm` is "
        "one float32 sgemm of the same forward FLOPs timed in fastlstm's process.",
    ]
    lstm_rows = [row for row in report["rows"]
                 if not row["busy"] and row["case"]["mode"] != "fit"]
    lines += (_table_lines(lstm_rows, limits) + _scaling_lines(report) + _fit_lines(report)
              + _memory_lines(report) + _busy_lines(report) + _note_lines(report))
    return "\n".join(lines) + "\n"


def _rounds_text(rounds: int) -> str:
    """How the measurements of a case were ordered, in words."""
    if rounds == 1:
        return "Each framework ran once per case, in the order of the table."
    return (f"Each case ran in {rounds} rounds (a case with a single measurement in one): "
            "its measurements in the order of the tables, then in reverse (A B C D, D C B A, "
            "and so on), each round with its share of the repeats; the figures pool the "
            "samples of all rounds (results.json keeps each round's median) and the notes "
            f"name any whose round medians differ by more than {DRIFT:.0%}.")


def _limits_text(limits: dict[str, Any]) -> str:
    """This machine's measured limits (:func:`machine_limits`) in words, or why not."""
    if "error" in limits:
        return f"not measured ({limits['error']})"
    peaks = limits["fma_peak_gflops"]
    most, *fewer = sorted(peaks, key=int, reverse=True)
    others = "".join(f"{peaks[n]:.0f} on {n}; " for n in fewer)
    trip = limits.get("core_round_trip_ns")
    return (f"FMA peak {peaks[most]:.0f} GFLOP/s on {most} thread{'s' * (most != '1')} "
            f"({others}float32, {limits['isa']}), L2 read {limits['l2_read_gbps']:.0f} GB/s "
            "per core" + (f", core-to-core round trip {trip:.0f} ns" if trip else ""))


def _round_trip_end_text(end: dict[str, Any] | None) -> str:
    """The core-to-core round trip measured at the end of the run, as a clause."""
    trip = (end or {}).get("core_round_trip_ns")
    return f"; core-to-core round trip at end {trip:.0f} ns" if trip else ""


def _table_lines(rows: list[dict[str, Any]], limits: dict[str, Any]) -> list[str]:
    """The LSTM table: one line per case and thread count, one column per framework; under
    it the machine's ``limits`` that `% of FMA peak` divides by."""
    if not rows:
        return []
    frameworks = [f for f in FRAMEWORKS if any(f in row["results"] for row in rows)]
    peers = [f for f in frameworks if f != "fastlstm"]
    reduced = any(row["case"].get("dtype", "float32") != "float32" for row in rows)
    header = (["case", "mode", "B", "T", "in", "H", "LxD", "thr"] + ["dtype"] * reduced
              + frameworks + [f"vs {p}" for p in peers]
              + ["GFLOP/s", "% of FMA peak", "sgemm GFLOP/s", "% of sgemm"])
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        case = row["case"]
        peak = limits.get("fma_peak_gflops", {}).get(str(row["threads"]))
        cells = [case["name"], case["mode"], *_shape(case), _threads_label(row["threads"])]
        cells += [_dtype(row)] * reduced
        cells += [_cell(row["results"].get(f)) for f in frameworks]
        cells += [_ratio(row["speedup"][p]) if p in row["speedup"] else "—" for p in peers]
        cells += [f"{row['gflops']:.3g}" if row["gflops"] else "—",
                  f"{row['gflops'] / peak * 100:.0f}%" if row["gflops"] and peak else "—",
                  f"{row['sgemm']['gflops']:.3g}" if row["sgemm"] else "—",
                  f"{row['fraction_of_sgemm'] * 100:.0f}%" if row["fraction_of_sgemm"] else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", f"Limits of this machine: {_limits_text(limits)}. `% of FMA peak` = "
                        "fastlstm's GFLOP/s / the peak at the row's threads (every thread "
                        "running 12 independent chains of vector FMAs on registers); the L2 "
                        "figure is one thread summing a 256 KiB buffer."]


def _scaling_lines(report: Report) -> list[str]:
    """fastlstm at 1 thread against the run's thread count, for cases measured at both
    without competing load."""
    times = {}
    for row in report["rows"]:
        ours = row["results"].get("fastlstm", {})
        if ours.get("status") == "ok" and not row["busy"]:
            times[(row["case"]["name"], row["case"]["mode"], row["threads"])] = ours["median_s"]
    n = report["machine"]["threads"]
    lines = []
    for (name, mode, threads), one in times.items():
        if threads == 1 and n > 1 and (name, mode, n) in times:
            many = times[(name, mode, n)]
            lines.append(f"| {name} | {mode} | {format_time(one)} | {format_time(many)} | "
                         f"{one / many:.2f}x |")
    if not lines:
        return []
    return ["", "## Thread scaling (fastlstm)", "",
            f"| case | mode | 1 thread | {n} threads | speedup |", "|---|---|---|---|---|", *lines]


def _fit_description(case: dict[str, Any]) -> str:
    V, n_in, H = case["vocabulary_size"], case["input_size"], case["hidden_size"]
    return (f"A char-LM: Embedding({V}, {n_in}) → LSTM({H}, return_sequences=True) → "
            f"Dense({V}, softmax), sparse categorical cross-entropy, Adam (lr 1e-3); "
            f"{case['num_sequences']} sequences of {case['seq_len']} random tokens in "
            f"minibatches of {case['batch']}, reshuffled every epoch. PyTorch: nn.Embedding, "
            "nn.LSTM(batch_first=True), nn.Linear, CrossEntropyLoss, Adam. Threads `default`: "
            "no thread setting at all, the framework's own choice.")


def _fit_lines(report: Report) -> list[str]:
    """One line per (framework, threads) of the fit epoch, against PyTorch at the run's
    thread count."""
    rows = [row for row in report["rows"] if not row["busy"] and row["case"]["mode"] == "fit"]
    if not rows:
        return []
    n = report["machine"]["threads"]
    measured = sorted(((f, row["threads"], r) for row in rows for f, r in row["results"].items()),
                      key=lambda m: (FRAMEWORKS.index(m[0]), -1 if m[1] is None else m[1]))
    torch = next((r for f, threads, r in measured
                  if f == "torch" and threads == n and r["status"] == "ok"), None)
    lines = ["", "## Training: one epoch of `Sequential.fit`", "",
             _fit_description(rows[0]["case"]), "",
             f"| framework | threads | epoch | vs torch ({n} threads) |", "|---|---|---|---|"]
    for framework, threads, result in measured:
        versus = (_ratio(torch["median_s"] / result["median_s"])
                  if torch and framework != "torch" and result["status"] == "ok" else "—")
        lines.append(f"| {framework} | {_threads_label(threads)} | {_cell(result)} | {versus} |")
    return lines


def _memory_lines(report: Report) -> list[str]:
    """Per case and mode at the run's thread count: each framework's memory for one call
    (the worker's ``memory_mib``)."""
    n = report["machine"]["threads"]
    rows = [row for row in report["rows"] if not row["busy"] and row["threads"] == n
            and any(r.get("memory_mib") is not None for r in row["results"].values())]
    if not rows:
        return []
    frameworks = [f for f in FRAMEWORKS if any(f in row["results"] for row in rows)]
    lines = ["", "## Memory of one call", "",
             "The peak resident set of the framework's process during its first call, minus "
             "its resident set just before (parameters and inputs already built): what a "
             "call allocates and what the framework keeps for the next (workspaces, caches), "
             "in MiB.", "",
             "| case | mode | " + " | ".join(frameworks) + " |",
             "|---|---|" + "---|" * len(frameworks)]
    for row in rows:
        cells = []
        for framework in frameworks:
            mib = row["results"].get(framework, {}).get("memory_mib")
            cells.append("—" if mib is None else f"{mib:.0f}")
        case = row["case"]
        lines.append(f"| {case['name']} | {case['mode']} | " + " | ".join(cells) + " |")
    return lines


def _busy_lines(report: Report) -> list[str]:
    """Per case under competing load: fastlstm with default threads, with 1 thread, the
    ratio of their medians and of their means (judged against :data:`BUSY_GOAL`), PyTorch
    with default threads."""
    rows = [row for row in report["rows"] if row["busy"]]
    if not rows:
        return []
    by_case: dict[tuple[str, str], dict[tuple[str, int | None], Result]] = {}
    for row in rows:
        results = by_case.setdefault((row["case"]["name"], row["case"]["mode"]), {})
        results.update(((f, row["threads"]), r) for f, r in row["results"].items())
    busy = rows[0]["busy"]
    lines = ["", f"## Busy machine: {busy} competing processes", "",
             f"Every measurement here ran while {busy} pure spin loops (a Python process each) "
             "competed for the cores. Threads `default`: no thread setting, the framework's "
             f"own choice. Goal: fastlstm with its default threads at most {BUSY_GOAL:g}x its "
             "time with 1 thread. A call under load either keeps its cores or loses a "
             "scheduler time slice, so its times fall in two groups and their median jumps "
             "between them with the share of calls that lost one; the goal takes the mean, "
             "the time per call over the run.", "",
             "| case | mode | fastlstm default | fastlstm 1 thread | default / 1 thread "
             f"(medians) | (means) | ≤ {BUSY_GOAL:g}x | torch default |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, mode), results in by_case.items():
        default, single = results.get(("fastlstm", None)), results.get(("fastlstm", 1))
        medians, means, met = "—", "—", "—"
        if default and single and default["status"] == single["status"] == "ok":
            medians = f"{default['median_s'] / single['median_s']:.2f}x"
            if "mean_s" in default and "mean_s" in single:
                value = default["mean_s"] / single["mean_s"]
                means, met = f"{value:.2f}x", "yes" if value <= BUSY_GOAL else "no"
        lines.append(f"| {name} | {mode} | {_cell(default)} | {_cell(single)} | {medians} | "
                     f"{means} | {met} | {_cell(results.get(('torch', None)))} |")
    return lines


def _note_lines(report: Report) -> list[str]:
    measured = [r for row in report["rows"] for r in row["results"].values()
                if r["status"] == "ok"]
    busy = [r["other_cores"] for r in measured if _noisy(r)]
    notes = [f"- \\* other processes kept {min(busy):.1f}-{max(busy):.1f} cores busy (on average) "
             f"during {len(busy)} of {len(measured)} measurements: those figures are noisy; "
             "rerun on an idle machine"] if busy else []
    warm_ups = [r["settled"] for result in measured for r in result.get("rounds", [result])]
    if not all(warm_ups):
        notes.append(f"- {warm_ups.count(False)} of {len(warm_ups)} warm-ups stopped at the "
                     f"{report['timing']['warmup_max_s']:g} s cap before the timings settled; "
                     "`settled` in results.json says which")
    notes += _drift_notes(report)
    for peer, command in report.get("missing_peers", {}).items():
        notes.append(f"- {peer}: not installed, left out of this run; to add it: `{command}`")
    for framework, seen in report["frameworks"].items():
        if seen["status"] == "absent":
            notes.append(f"- {framework}: absent ({seen['message']})")
    for row in report["rows"]:
        for framework, result in row["results"].items():
            if result["status"] == "error":
                load = f", {row['busy']} busy" if row["busy"] else ""
                notes.append(f"- {row['case']['name']} {row['case']['mode']} {framework} "
                             f"({_threads_label(row['threads'])} thr{load}): "
                             f"error: {result.get('message', '')}")
    if report.get("chart_note"):
        notes.append(f"- {report['chart_note']}")
    return ["", "## Notes", "", *notes] if notes else []


def _drift_notes(report: Report) -> list[str]:
    """A note for each measurement (and fastlstm's sgemm) whose round medians differ by more
    than :data:`DRIFT`."""
    notes = []
    for row in report["rows"]:
        case, load = row["case"], f", {row['busy']} busy" if row["busy"] else ""
        for framework, result in row["results"].items():
            for name, timed in ((framework, result), ("sgemm in fastlstm's process",
                                                      result.get("sgemm"))):
                medians = [r["median_s"] for r in (timed or {}).get("rounds", [])]
                if len(medians) > 1 and max(medians) > (1 + DRIFT) * min(medians):
                    notes.append(
                        f"- {case['name']} {case['mode']} {name} "
                        f"({_threads_label(row['threads'])} thr{load}): round medians "
                        f"{', '.join(format_time(m) for m in medians)} differ by "
                        f"{max(medians) / min(medians) - 1:.0%}: the machine's speed drifted "
                        "between the rounds")
    return notes


def _noisy_speedup(row: dict[str, Any], peer: str) -> bool:
    """Whether fastlstm's or ``peer``'s measurement in ``row`` is noisy (marked * in the
    table)."""
    return any(_noisy(row["results"].get(f, {})) for f in ("fastlstm", peer))


def speedup_figure(report: Report) -> Any:
    """A bar chart of fastlstm's speedup over each peer per case (without competing load),
    as a matplotlib Figure; ratios from a noisy measurement carry the table's ``*`` and a
    footnote says what it means.

    Returns the Figure, or a note (str) saying why there is none (matplotlib absent,
    nothing to plot).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "no speedup chart: matplotlib is not installed"
    rows = [row for row in report["rows"] if row["speedup"] and not row["busy"]]
    peers = [p for p in PEERS if any(p in row["speedup"] for row in rows)]
    if not peers:
        return "no speedup chart: no peer was measured next to fastlstm"
    labels = [f"{r['case']['name']} {r['case']['mode']} ({_threads_label(r['threads'])} thr)"
              for r in rows]
    fig = Figure(figsize=(9, 0.2 * len(rows) * len(peers) + 1.7))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    height = 0.8 / len(peers)
    ratios = [v for row in rows for v in row["speedup"].values() if v == v and v > 0]
    noisy_bars = 0
    for j, peer in enumerate(peers):
        positions = [i + (j - (len(peers) - 1) / 2) * height for i in range(len(rows))]
        values = [row["speedup"].get(peer, float("nan")) for row in rows]
        marks = [peer in row["speedup"] and _noisy_speedup(row, peer) for row in rows]
        noisy_bars += sum(marks)
        # bars grow from 1: right when fastlstm is faster, left when it is slower
        bars = ax.barh(positions, [abs(v - 1) for v in values], left=[min(v, 1) for v in values],
                       height=height, label=f"vs {peer}")
        ax.bar_label(bars, labels=[_ratio(v) + (" *" if mark else "") if v == v else ""
                                   for v, mark in zip(values, marks)], fontsize=6, padding=2)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(min(ratios + [1.0]) / 1.5, max(ratios + [1.0]) * 1.5)   # every bar whole
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("speedup of fastlstm (peer time / fastlstm time, log scale; > 1: faster)")
    machine = report["machine"]
    ax.set_title(f"fastlstm speedup, {machine['threads']} threads, {machine['cpu_model']}",
                 fontsize=9)
    ax.legend(loc="best")
    if noisy_bars:
        fig.text(0.01, 0.005, f"* noisy: other processes kept more than {NOISY_CORES:g} cores "
                 "busy during fastlstm's or the peer's measurement (as in the table)",
                 fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.03 if noisy_bars else 0, 1, 1))
    return fig


def write_chart(report: Report, path: str) -> str | None:
    """Save :func:`speedup_figure` as a PNG at ``path``.

    Returns None, or the note saying why there is no chart.
    """
    fig = speedup_figure(report)
    if isinstance(fig, str):
        return fig
    fig.savefig(path, dpi=110)
    return None


def write_report(report: Report, out_dir: str) -> str:
    """Write results.json, speedup.png and results.md into ``out_dir`` (created if needed);
    return the Markdown."""
    os.makedirs(out_dir, exist_ok=True)
    report["chart_note"] = write_chart(report, os.path.join(out_dir, "speedup.png"))
    markdown = to_markdown(report)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    return markdown


def main(quick: bool = False, threads: int | None = None, out_dir: str | None = None,
         frameworks: Iterable[str] | None = None, modes: Iterable[str] = MODES,
         busy: int = 0, dtype: str = "float32", rounds: int | None = None) -> int:
    """Run the benchmark, print the tables and write the files; return the exit status
    (1 if fastlstm itself failed on some case, else 0).

    ``out_dir`` None: :func:`default_out_dir`. ``frameworks`` None: fastlstm, NumPy and
    every peer that is installed (:func:`missing_peers` are left out, with a note); named
    frameworks that are not installed are measured and reported absent. ``dtype`` bfloat16
    or int8: the reduced-precision run (see :func:`plan`). ``rounds``: see :func:`run`;
    None: ROUNDS, or QUICK_ROUNDS with ``quick``.
    """
    import fastlstm
    threads = fastlstm.get_num_threads() if threads is None else threads
    rounds = (QUICK_ROUNDS if quick else ROUNDS) if rounds is None else rounds
    out_dir = default_out_dir() if out_dir is None else out_dir
    missing: dict[str, str] = {}
    if frameworks is None:
        missing = missing_peers()
        frameworks = [f for f in FRAMEWORKS if f not in missing]
    entries = plan(quick, threads, frameworks, modes, busy, dtype)
    load = f", {busy} competing processes in the busy section" if busy else ""
    _log(f"fastlstm bench: {sum(len(e.frameworks) for e in entries)} measurements in up to "
         f"{rounds} rounds, {threads} threads{load}, one process each; writing to "
         f"{os.path.abspath(out_dir)}")
    for peer, command in missing.items():
        _log(f"fastlstm bench: {peer} is not installed, left out; to add it: {command}")
    report = run(entries, QUICK_TIMING if quick else FULL_TIMING, rounds=rounds)
    report["missing_peers"] = missing
    print(write_report(report, out_dir))
    _log(f"wrote {', '.join(os.path.join(out_dir, n) for n in ('results.md', 'results.json'))}"
         + ("" if report["chart_note"] else f", {os.path.join(out_dir, 'speedup.png')}"))
    failed = [row for row in report["rows"]
              if row["results"].get("fastlstm", {}).get("status") not in (None, "ok")]
    return 1 if failed else 0
