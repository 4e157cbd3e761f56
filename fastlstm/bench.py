"""Side-by-side benchmark of fastlstm against NumPy, PyTorch and ONNX Runtime.

Every (framework, case) runs in a fresh process (:mod:`fastlstm._bench_worker`) with the
same thread count, set both through the environment (``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``) and through each framework's own setting.
Results are medians over repeats after warm-up. For each case the report gives the time of
every framework, the speedup of fastlstm over each peer (peer time / fastlstm time, > 1
means fastlstm is faster), fastlstm's GFLOP/s and its fraction of the throughput of one
float32 sgemm of the same FLOPs timed in the same run. A peer that is not installed is
reported ``absent``; one that fails is reported ``error`` and the run goes on.

Usage: ``python -m fastlstm bench [--quick]`` (see ``fastlstm bench --help``), or
:func:`run` and :func:`write_report` from Python.
"""
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any, Callable, Iterable, Sequence

from ._bench_worker import FRAMEWORKS, MODES, RESULT_PREFIX, UNSUPPORTED, Case, Timing

Result = dict[str, Any]  # one framework on one case, as the worker reports it
Report = dict[str, Any]  # a whole run, as results.json stores it
DEFAULT_OUT = "fastlstm-bench"
QUICK_TIMING = Timing(warmup_s=0.05, budget_s=0.25, min_repeats=3, max_repeats=100)
FULL_TIMING = Timing(warmup_s=0.1, budget_s=0.6, min_repeats=3, max_repeats=200)
WORKER_TIMEOUT_S = 300
# The worker runs as a script, not as `-m fastlstm._bench_worker`, so that importing it does
# not import the fastlstm package: a peer's process then holds the peer alone, not fastlstm's
# compiled modules, SciPy's OpenBLAS and the system libgomp (which PyTorch would bind to
# instead of its own).
WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bench_worker.py")
WORKER_BOOTSTRAP = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
PEERS = tuple(f for f in FRAMEWORKS if f != "fastlstm")
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Other processes keeping more cores than this busy during a measurement make it noisy.
NOISY_CORES = 0.2

# DESIGN section 5: (batch, seq_len, input_size, hidden_size)
S_SHAPES = {"S1": (1, 128, 32, 128), "S2": (16, 64, 64, 256), "S3": (64, 100, 256, 512)}
# Baidu DeepBench's inference LSTMs: input = hidden, H 128..1024, B 1..64, T 50..150.
DEEPBENCH_SHAPES = {"DB1": (1, 150, 128, 128), "DB2": (4, 150, 256, 256),
                    "DB3": (1, 100, 512, 512), "DB4": (64, 50, 512, 512),
                    "DB5": (4, 50, 1024, 1024), "DB6": (32, 50, 1024, 1024)}


@dataclass(frozen=True)
class Entry:
    """One line of the plan: a case, the thread count, the frameworks to run on it."""

    case: Case
    threads: int
    frameworks: tuple[str, ...]


def plan(quick: bool = False, threads: int = 2, frameworks: Iterable[str] = FRAMEWORKS,
         modes: Iterable[str] = MODES) -> list[Entry]:
    """The entries of a quick or full run, filtered to ``frameworks`` and ``modes``.

    Quick: S1-S3 forward and train, the S1 streaming step. Full adds the S3 streaming step,
    2-layer and bidirectional S2, the DeepBench-style grid (forward) and, when
    ``threads`` > 1, fastlstm on S3 with one thread for the scaling figure.
    """
    chosen = _check_choices("frameworks", frameworks, FRAMEWORKS)
    modes = _check_choices("modes", modes, MODES)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
    frameworks = tuple(f for f in FRAMEWORKS if f in chosen)
    cases = []
    for name, (B, T, n_in, H) in S_SHAPES.items():
        cases += [Case(name, "forward", B, T, n_in, H), Case(name, "train", B, T, n_in, H)]
    cases.append(Case("S1", "stream", 1, 1, 32, 128))
    scaling = []
    if not quick:
        cases.append(Case("S3", "stream", 1, 1, 256, 512))
        B, T, n_in, H = S_SHAPES["S2"]
        for mode in ("forward", "train"):
            cases += [Case("S2-2layer", mode, B, T, n_in, H, num_layers=2),
                      Case("S2-bidir", mode, B, T, n_in, H, bidirectional=True)]
        cases += [Case(name, "forward", *shape) for name, shape in DEEPBENCH_SHAPES.items()]
        if threads > 1 and "fastlstm" in frameworks:
            scaling = [Entry(c, 1, ("fastlstm",)) for c in cases
                       if c.name == "S3" and c.mode in ("forward", "train")]
    entries = [Entry(c, threads, frameworks) for c in cases] + scaling
    return [e for e in entries if e.case.mode in modes]


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


def run_worker(framework: str, case: Case, threads: int, timing: Timing,
               timeout: float = WORKER_TIMEOUT_S) -> Result:
    """Measure one framework on one case in a fresh process; return the worker's result.

    The result's ``other_cores`` is how many cores other processes kept busy, on average,
    while the worker ran (None where /proc/stat is missing): above ~0.1 the figures are noisy.
    """
    if (framework, case.mode) in UNSUPPORTED:
        return dict(framework=framework, threads=threads, status="n/a",
                    message=f"{framework} has no {case.mode} mode")
    spec = dict(framework=framework, case=asdict(case), threads=threads, timing=asdict(timing))
    env = dict(os.environ, **{name: str(threads) for name in THREAD_ENV})
    command = [sys.executable, "-c", WORKER_BOOTSTRAP, WORKER_PATH, json.dumps(spec)]
    # run from the directory holding this fastlstm package, so the worker imports the same one
    package_root = os.path.dirname(os.path.dirname(WORKER_PATH))
    busy_before, children_before = busy_cpu_seconds(), _children_cpu_seconds()
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, cwd=package_root, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(framework=framework, threads=threads, status="error",
                    message=f"timed out after {timeout} s")
    wall = time.perf_counter() - started
    busy_after, other_cores = busy_cpu_seconds(), None
    if busy_before is not None and busy_after is not None:
        others = busy_after - busy_before - (_children_cpu_seconds() - children_before)
        other_cores = max(0.0, others / wall)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX):]), other_cores=other_cores)
    stderr = proc.stderr.strip().splitlines()
    return dict(framework=framework, threads=threads, status="error", other_cores=other_cores,
                message=f"worker exited with code {proc.returncode}: "
                        f"{stderr[-1] if stderr else 'no output'}")


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
        if result["status"] == "ok":
            result["gflops"] = flops / result["median_s"] / 1e9
    row: dict[str, Any] = dict(case=asdict(case), threads=entry.threads, flops=flops,
                               results=results, speedup={}, gflops=None, sgemm=None,
                               fraction_of_sgemm=None)
    ours = results.get("fastlstm", {})
    if ours.get("sgemm"):
        sgemm = ours["sgemm"]
        row["sgemm"] = dict(sgemm, gflops=sgemm["flops"] / sgemm["median_s"] / 1e9)
    if ours.get("status") == "ok":
        row["gflops"] = ours["gflops"]
        row["speedup"] = {peer: r["median_s"] / ours["median_s"]
                          for peer, r in results.items()
                          if peer != "fastlstm" and r["status"] == "ok"}
        if row["sgemm"]:
            row["fraction_of_sgemm"] = ours["gflops"] / row["sgemm"]["gflops"]
    return row


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(entries: Sequence[Entry], timing: Timing = FULL_TIMING,
        log: Callable[[str], None] = _log) -> Report:
    """Run every (framework, entry) in its own process; return the report dict."""
    if not entries:
        raise ValueError("entries: expected at least one benchmark entry, got none")
    started = time.time()
    threads = max(e.threads for e in entries)
    report: Report = dict(schema="fastlstm-bench/1",
                          started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), timing=asdict(timing),
                          machine=machine_info(threads), frameworks={}, rows=[])
    total = sum(len(e.frameworks) for e in entries)
    done = 0
    for entry in entries:
        results: dict[str, Result] = {}
        for framework in entry.frameworks:
            done += 1
            result = run_worker(framework, entry.case, entry.threads, timing)
            results[framework] = result
            _note_framework(report["frameworks"], result)
            log(f"[{done:3d}/{total}] {entry.case.name} {entry.case.mode} {framework} "
                f"({entry.threads} thr): {_cell(result)}")
        report["rows"].append(summarize(entry, results))
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["wall_time_s"] = time.time() - started
    return report


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


def _noisy(result: Result) -> bool:
    return (result.get("other_cores") or 0.0) > NOISY_CORES


def _cell(result: Result) -> str:
    """Table cell of one framework: 'median ±spread%' (then * if the machine was busy) or
    its status."""
    status = result["status"]
    if status != "ok":
        return "error" if status == "error" else status
    spread = (result["q3_s"] - result["q1_s"]) / 2 / result["median_s"] * 100
    return f"{format_time(result['median_s'])} ±{spread:.0f}%" + (" *" if _noisy(result) else "")


def _shape(case: dict[str, Any]) -> list[str]:
    layers = f"{case['num_layers']}x{2 if case['bidirectional'] else 1}"
    return [str(case[k]) for k in ("batch", "seq_len", "input_size", "hidden_size")] + [layers]


def to_markdown(report: Report) -> str:
    """The report as Markdown: machine, the results table, thread scaling, notes."""
    machine = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    frameworks = [f for f in FRAMEWORKS if any(f in row["results"] for row in report["rows"])]
    peers = [f for f in frameworks if f != "fastlstm"]
    lines = [
        "# fastlstm benchmark", "",
        f"- CPU: {machine['cpu_model']} ({machine['usable_cores']} usable cores; "
        f"SIMD: {' '.join(machine['simd']) or 'unknown'})",
        f"- Threads per framework: {machine['threads']}; load average at start "
        f"{machine['load_average'][0]:.2f}, at end {machine['load_average_end'][0]:.2f}",
        f"- Versions: {versions}",
        f"- Wall time: {report['wall_time_s']:.0f} s; float32; time-major; each framework "
        "in its own process", "",
        "Times are medians per call; ± is half the interquartile range as % of the median. "
        "`vs X` = X's time / fastlstm's time (> 1: fastlstm faster). GFLOP/s counts "
        "2·T·B·4H·(in+H) per layer and direction (a training step as 3 forwards); `sgemm` is "
        "one float32 sgemm of the same forward FLOPs timed in fastlstm's process.", "",
    ]
    header = (["case", "mode", "B", "T", "in", "H", "LxD", "thr"] + frameworks
              + [f"vs {p}" for p in peers] + ["GFLOP/s", "sgemm GFLOP/s", "% of sgemm"])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        case = row["case"]
        cells = [case["name"], case["mode"], *_shape(case), str(row["threads"])]
        cells += [_cell(row["results"][f]) if f in row["results"] else "—" for f in frameworks]
        cells += [_ratio(row["speedup"][p]) if p in row["speedup"] else "—" for p in peers]
        cells += [f"{row['gflops']:.3g}" if row["gflops"] else "—",
                  f"{row['sgemm']['gflops']:.3g}" if row["sgemm"] else "—",
                  f"{row['fraction_of_sgemm'] * 100:.0f}%" if row["fraction_of_sgemm"] else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _scaling_lines(report) + _note_lines(report)
    return "\n".join(lines) + "\n"


def _scaling_lines(report: Report) -> list[str]:
    """fastlstm at 1 thread against the run's thread count, for cases measured at both."""
    times = {}
    for row in report["rows"]:
        ours = row["results"].get("fastlstm", {})
        if ours.get("status") == "ok":
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


def _note_lines(report: Report) -> list[str]:
    results = [r for row in report["rows"] for r in row["results"].values()]
    busy = [r["other_cores"] for r in results if _noisy(r)]
    notes = [f"- \\* other processes kept {min(busy):.1f}-{max(busy):.1f} cores busy (on average) "
             f"during {len(busy)} of {len(results)} measurements: those figures are noisy; "
             "rerun on an idle machine"] if busy else []
    for framework, seen in report["frameworks"].items():
        if seen["status"] == "absent":
            notes.append(f"- {framework}: absent ({seen['message']})")
    for row in report["rows"]:
        for framework, result in row["results"].items():
            if result["status"] == "error":
                notes.append(f"- {row['case']['name']} {row['case']['mode']} {framework}: "
                             f"error: {result.get('message', '')}")
    if report.get("chart_note"):
        notes.append(f"- {report['chart_note']}")
    return ["", "## Notes", "", *notes] if notes else []


def write_chart(report: Report, path: str) -> str | None:
    """A bar chart of fastlstm's speedup over each peer per case, saved as PNG.

    Returns None, or a note saying why there is no chart (matplotlib absent, nothing to plot).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "no speedup chart: matplotlib is not installed"
    rows = [row for row in report["rows"] if row["speedup"]]
    peers = [p for p in PEERS if any(p in row["speedup"] for row in rows)]
    if not peers:
        return "no speedup chart: no peer was measured next to fastlstm"
    labels = [f"{r['case']['name']} {r['case']['mode']} ({r['threads']} thr)" for r in rows]
    fig = Figure(figsize=(9, 0.2 * len(rows) * len(peers) + 1.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    height = 0.8 / len(peers)
    ratios = [v for row in rows for v in row["speedup"].values() if v == v and v > 0]
    for j, peer in enumerate(peers):
        positions = [i + (j - (len(peers) - 1) / 2) * height for i in range(len(rows))]
        values = [row["speedup"].get(peer, float("nan")) for row in rows]
        # bars grow from 1: right when fastlstm is faster, left when it is slower
        bars = ax.barh(positions, [abs(v - 1) for v in values], left=[min(v, 1) for v in values],
                       height=height, label=f"vs {peer}")
        ax.bar_label(bars, labels=[_ratio(v) if v == v else "" for v in values], fontsize=6,
                     padding=2)
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
    fig.tight_layout()
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


def main(quick: bool = False, threads: int | None = None, out_dir: str = DEFAULT_OUT,
         frameworks: Iterable[str] = FRAMEWORKS, modes: Iterable[str] = MODES) -> int:
    """Run the benchmark, print the table and write the files; return the exit status
    (1 if fastlstm itself failed on some case, else 0)."""
    import fastlstm
    threads = fastlstm.get_num_threads() if threads is None else threads
    entries = plan(quick, threads, frameworks, modes)
    _log(f"fastlstm bench: {sum(len(e.frameworks) for e in entries)} measurements, "
         f"{threads} threads, one process each; writing to {os.path.abspath(out_dir)}")
    report = run(entries, QUICK_TIMING if quick else FULL_TIMING)
    print(write_report(report, out_dir))
    _log(f"wrote {', '.join(os.path.join(out_dir, n) for n in ('results.md', 'results.json'))}"
         + ("" if report["chart_note"] else f", {os.path.join(out_dir, 'speedup.png')}"))
    failed = [row for row in report["rows"]
              if row["results"].get("fastlstm", {}).get("status") not in (None, "ok")]
    return 1 if failed else 0
