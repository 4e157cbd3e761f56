"""The benchmark instrument: cases, timing, workers, the runner's outputs, absent/crashing
peers, the fit epoch, competing load."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, replace

import numpy as np
import pytest
from conftest import assert_close, require

from fastlstm import bench, reference
from fastlstm._bench_worker import (BUILDERS, FRAMEWORKS, Case, Timing, build_call,
                                    call_memory_mib, is_settled, make_data, make_params,
                                    make_tokens, measure, summary)

TINY_TIMING = Timing(warmup_min_s=0.0, warmup_max_s=0.0, budget_s=0.01, min_repeats=2,
                     max_repeats=3, min_repeat_s=0.0)
TINY_FIT = Case("tinylm", "fit", batch=4, seq_len=5, input_size=3, hidden_size=6,
                vocabulary_size=7, num_sequences=10)


@pytest.fixture(autouse=True)
def short_probe(monkeypatch):
    """The machine probe of every run here takes hundredths of a second."""
    monkeypatch.setattr(bench, "PROBE_S", 0.01)


def test_flops_and_sgemm_shape_follow_the_lstm_count():
    s3 = Case("S3", "forward", 64, 100, 256, 512)
    assert s3.sgemm_shape() == (6400, 2048, 768)
    assert s3.flops() == 2 * 100 * 64 * 4 * 512 * (256 + 512)
    assert Case("S3", "train", 64, 100, 256, 512).flops() == 3 * s3.flops()
    # layer 1 of a bidirectional stack reads 2H inputs; every layer has 2 directions
    deep = Case("x", "forward", 2, 3, 5, 7, num_layers=2, bidirectional=True)
    assert deep.layer_input_sizes() == [5, 14]
    assert deep.forward_flops() == 2 * 3 * 2 * 4 * 7 * 2 * ((5 + 7) + (14 + 7))


@pytest.mark.parametrize("fields, message", [
    (dict(mode="sideways"), "mode"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(mode="stream", batch=2), "stream"),
    (dict(mode="stream", batch=1, seq_len=1, bidirectional=True), "stream"),
    (dict(mode="fit", num_sequences=3), "vocabulary_size"),
    (dict(mode="fit", vocabulary_size=5, num_sequences=3, num_layers=2), "fit"),
    (dict(vocabulary_size=5), "only mode 'fit'"),
])
def test_case_rejects_bad_fields(fields, message):
    base = dict(name="c", mode="forward", batch=1, seq_len=1, input_size=3, hidden_size=4)
    with pytest.raises(ValueError, match=message):
        Case(**{**base, **fields})


def _steps(entries):
    return [(e.case.name, e.case.mode, e.threads, e.frameworks) for e in entries]


def test_plan_quick_full_and_filters():
    quick = bench.plan(quick=True, threads=2)
    assert _steps(quick) == [(name, mode, 2, FRAMEWORKS) for name, mode in [
        ("S1", "forward"), ("S1", "train"), ("S2", "forward"), ("S2", "train"),
        ("S3", "forward"), ("S3", "train"), ("S1", "stream")]] + [
        ("charlm", "fit", 2, ("fastlstm", "torch"))]
    assert not any(e.busy for e in quick)

    full = bench.plan(quick=False, threads=2)
    assert [s for s in _steps(full) if s[3] == ("fastlstm",)] == [
        ("charlm", "fit", None, ("fastlstm",)),
        ("S3", "forward", 1, ("fastlstm",)), ("S3", "train", 1, ("fastlstm",)),
        ("charlm", "fit", 1, ("fastlstm",))]
    names = {e.case.name for e in full}
    assert {"S2-2layer", "S2-bidir", *bench.DEEPBENCH_SHAPES} <= names
    assert not [e for e in bench.plan(quick=False, threads=1) if e.threads == 1
                and e.frameworks == ("fastlstm",)]

    streams = bench.plan(threads=2, frameworks=["numpy", "fastlstm"], modes=["stream"])
    assert {e.case.mode for e in streams} == {"stream"}
    assert all(e.frameworks == ("fastlstm", "numpy") for e in streams)
    assert _steps(bench.plan(True, 2, frameworks=["numpy", "torch"], modes=["fit"])) == [
        ("charlm", "fit", 2, ("torch",))]
    with pytest.raises(ValueError, match="frameworks"):
        bench.plan(frameworks=["tensorflow"])
    with pytest.raises(ValueError, match="modes"):
        bench.plan(modes=[])
    with pytest.raises(ValueError, match="threads"):
        bench.plan(threads=0)
    with pytest.raises(ValueError, match="busy"):
        bench.plan(busy=-1)
    assert len(bench.plan(True, 2, frameworks=iter(["numpy"]), modes=iter(["train"]))) == 3


def test_plan_busy_section():
    """--busy N: S1-S3 forward and the fit, fastlstm at default and 1 thread, torch at default."""
    busy = [e for e in bench.plan(quick=True, threads=2, busy=3) if e.busy]
    assert all(e.busy == 3 for e in busy)
    expected = []
    for name, mode in [("S1", "forward"), ("S2", "forward"), ("S3", "forward"),
                       ("charlm", "fit")]:
        expected += [(name, mode, None, ("fastlstm", "torch")), (name, mode, 1, ("fastlstm",))]
    assert _steps(busy) == expected
    only_fit = bench.plan(quick=True, threads=2, frameworks=["fastlstm"], modes=["fit"], busy=1)
    assert [(e.threads, e.busy) for e in only_fit] == [(2, 0), (None, 1), (1, 1)]


def test_is_settled_compares_the_medians_of_the_last_two_windows():
    assert not is_settled([1.0, 1.0, 1.0], window=2, tolerance=0.05)     # too few samples
    assert is_settled([5.0, 1.0, 1.01, 1.02, 0.99], window=2, tolerance=0.05)
    assert not is_settled([5.0, 3.0, 1.0, 1.0], window=2, tolerance=0.05)
    assert not is_settled([1.0, 1.0, 1.03, 9.0, 1.0], window=2, tolerance=0.05)
    assert is_settled([1.0, 1.04], window=1, tolerance=0.05)
    assert not is_settled([1.0, 1.06], window=1, tolerance=0.05)


class FakeTimer:
    """A clock and a call that advances it by scripted durations (the last one repeats)."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = list(durations)
        self.calls = 0

    def clock(self):
        return self.now

    def call(self):
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1


def test_measure_warms_up_until_timings_settle():
    """A slow first call (as an allocation or a thread pool start) does not set the repeats."""
    timer = FakeTimer([0.050, 0.020, 0.011, 0.010, 0.0101, 0.0099, 0.010])
    timing = Timing(warmup_min_s=0.0, warmup_max_s=10.0, settle_window=2, settle_tolerance=0.05,
                    budget_s=0.105, min_repeats=3, max_repeats=50, min_repeat_s=0.001)
    stats = measure(timer.call, timing, clock=timer.clock)
    print(stats)
    # medians (0.0105, then 0.01) of the windows (0.011, 0.010) and (0.0101, 0.0099)
    assert stats["settled"] and stats["warmup_calls"] == 6
    assert stats["warmup_s"] == pytest.approx(0.111)
    assert stats["inner"] == 1 and stats["repeats"] == 10      # 0.105 s budget / 0.01 s
    assert stats["median_s"] == pytest.approx(0.010)
    assert timer.calls == 6 + 10


def test_warm_up_keeps_going_for_its_minimum_time_and_stops_at_its_cap():
    timing = Timing(warmup_min_s=0.5, warmup_max_s=10.0, settle_window=2, settle_tolerance=0.05,
                    budget_s=0.0, min_repeats=2, max_repeats=5, min_repeat_s=0.0)
    steady = FakeTimer([0.1])
    stats = measure(steady.call, timing, clock=steady.clock)
    assert stats["settled"] and stats["warmup_calls"] == 5       # settled after 4, 0.5 s at 5

    shrinking = FakeTimer([0.1 * 0.8 ** k for k in range(1000)])  # never within 5%
    capped = replace(timing, warmup_max_s=0.3)
    stats = measure(shrinking.call, capped, clock=shrinking.clock)
    print(stats)
    assert not stats["settled"]
    assert 0.3 <= stats["warmup_s"] < 0.3 + 0.1
    assert stats["repeats"] == 2                                 # the min_repeats floor


def test_measure_repeats_and_batches_short_calls():
    calls = []
    stats = measure(lambda: calls.append(1), Timing(warmup_min_s=0.0, warmup_max_s=0.05,
                                                    budget_s=0.05, min_repeats=3, max_repeats=7,
                                                    min_repeat_s=0.001))
    print(stats)
    assert 3 <= stats["repeats"] <= 7
    assert stats["inner"] > 1  # an append takes far less than 1 ms, so calls are batched
    assert len(calls) == stats["warmup_calls"] + stats["repeats"] * stats["inner"]
    ordered = [stats[k] for k in ("min_s", "q1_s", "median_s", "q3_s", "max_s")]
    assert 0 < ordered[0] and ordered == sorted(ordered)


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_every_framework_computes_the_same_forward(num_layers, bidirectional):
    """The instrument times the same LSTM everywhere: same parameters, same input, same output."""
    require("torch")
    require("onnxruntime")
    case = Case("tiny", "forward", 3, 5, 4, 6, num_layers=num_layers, bidirectional=bidirectional)
    params = make_params(case)
    x, grad_out = make_data(case)
    expected = reference.forward(params, x, num_layers=num_layers, bidirectional=bidirectional)[0]
    for framework in FRAMEWORKS:
        out = np.asarray(BUILDERS[framework](case, params, x, grad_out, 1)())
        assert_close(f"{framework} forward {num_layers}x{case.num_directions}", out, expected, 2e-5)


def test_every_framework_streams_the_same_steps():
    require("torch")
    require("onnxruntime")
    case = Case("tiny", "stream", 1, 1, 4, 6)
    params = make_params(case)
    x, grad_out = make_data(case)
    steps = 3
    expected = reference.forward(params, np.repeat(x, steps, axis=0))[0][:, 0]  # (steps, H)
    for framework in FRAMEWORKS:
        step = BUILDERS[framework](case, params, x, grad_out, 1)
        got = np.stack([np.asarray(step()).reshape(-1) for _ in range(steps)])
        assert_close(f"{framework} stream", got, expected, 2e-5)


@pytest.mark.parametrize("fields, message", [
    (dict(dtype="float16"), "dtype"),
    (dict(dtype="int8", mode="train"), "inference only"),
])
def test_case_rejects_bad_dtypes(fields, message):
    with pytest.raises(ValueError, match=message):
        Case(**{**dict(name="c", mode="forward", batch=1, seq_len=1, input_size=3,
                       hidden_size=4), **fields})


def test_plan_of_a_reduced_precision_run():
    quick = bench.plan(quick=True, threads=2, dtype="int8")
    assert [(e.case.name, e.case.mode, e.case.dtype, e.frameworks) for e in quick] == [
        ("S1", "forward", "float32", ("fastlstm", "torch")),
        ("S3", "forward", "float32", ("fastlstm", "torch")),
        ("S1", "stream", "float32", ("fastlstm", "torch")),
        ("S1", "forward", "int8", ("fastlstm", "torch", "onnxruntime")),
        ("S3", "forward", "int8", ("fastlstm", "torch", "onnxruntime")),
        ("S1", "stream", "int8", ("fastlstm", "torch", "onnxruntime"))]
    full = bench.plan(quick=False, threads=2, dtype="bfloat16", frameworks=["fastlstm", "numpy"],
                      modes=["stream"])
    assert [(e.case.name, e.case.dtype, e.frameworks) for e in full] == [
        ("S1", "float32", ("fastlstm",)), ("S3", "float32", ("fastlstm",)),
        ("S1", "bfloat16", ("fastlstm",)), ("S3", "bfloat16", ("fastlstm",))]
    assert all(e.case.input_size == 256 for e in full if e.case.name == "S3")
    with pytest.raises(ValueError, match="dtype"):
        bench.plan(dtype="float16")
    with pytest.raises(ValueError, match="busy"):
        bench.plan(dtype="int8", busy=1)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_every_reduced_precision_lstm_computes_the_same_steps(dtype):
    """Each framework's bfloat16 / int8 LSTM, forward and stream, near the float32 reference:
    the same weights and inputs reach every one of them."""
    require("torch")
    require("onnxruntime")
    for case in (Case("tiny", "forward", 3, 5, 4, 20, num_layers=2, dtype=dtype),
                 Case("tiny", "stream", 1, 1, 4, 20, dtype=dtype)):
        params = make_params(case)
        x, grad_out = make_data(case)
        steps = 3 if case.mode == "stream" else 1
        inputs = np.repeat(x, steps, axis=0) if case.mode == "stream" else x
        expected = reference.forward(params, inputs, num_layers=case.num_layers)[0]
        ran = []
        for framework in FRAMEWORKS:
            if bench.unsupported(framework, case):
                continue
            call = BUILDERS[framework](case, params, x, grad_out, 1)
            outs = [call() for _ in range(steps)]
            outs = [np.asarray(o.float() if hasattr(o, "float") else o) for o in outs]
            got = np.stack([o.reshape(-1) for o in outs]) if steps > 1 else outs[0]
            want = expected[:, 0] if steps > 1 else expected
            assert np.abs(got - want).max() < 2e-2, (framework, case)
            assert np.abs(got - want).max() > 0, (framework, case)   # really reduced precision
            ran.append(framework)
        assert ran == (["fastlstm", "torch"] if dtype == "bfloat16"
                       else ["fastlstm", "torch", "onnxruntime"])


def test_reduced_precision_run_reports_the_kernel_path_and_dtype_column(tmp_path):
    entries = [bench.Entry(Case("tiny", "forward", 2, 3, 4, 5), 1, ("fastlstm",)),
               bench.Entry(Case("tiny", "forward", 2, 3, 4, 5, dtype="int8"), 1,
                           ("fastlstm", "numpy"))]
    report = bench.run(entries, TINY_TIMING, log=print)
    markdown = bench.write_report(report, str(tmp_path))
    print(markdown)
    ours = report["rows"][1]["results"]["fastlstm"]
    assert ours["status"] == "ok" and ours["kernel_path"] in ("avx512-vnni", "portable")
    assert report["rows"][1]["results"]["numpy"]["status"] == "n/a"
    assert "kernel_path" not in report["rows"][0]["results"]["fastlstm"]
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert "| thr | dtype | fastlstm | numpy |" in table[0]
    assert "| 1 | float32 |" in table[1]
    assert f"| 1 | int8 ({ours['kernel_path']}) |" in table[2] and "| n/a |" in table[2]
    assert "float32, int8; time-major" in markdown


@pytest.fixture
def fake_peers(tmp_path, monkeypatch):
    """Shadow torch with a package whose import fails and onnxruntime with one that crashes."""
    fake = tmp_path / "fake_site"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        'raise ImportError("simulated: torch is not installed")\n')
    (fake / "onnxruntime").mkdir()
    (fake / "onnxruntime" / "__init__.py").write_text(
        "__version__ = '0.0-fake'\n"
        "class SessionOptions:\n"
        "    def __init__(self):\n"
        "        raise RuntimeError('simulated onnxruntime crash')\n")
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(fake) + (os.pathsep + path if path else ""))
    return fake


def _sections(markdown):
    """The Markdown's '## ' sections by title ('' for the part before the first)."""
    parts = ("\n" + markdown).split("\n## ")
    return {part.split("\n", 1)[0] if i else "": part for i, part in enumerate(parts)}


@pytest.mark.slow
def test_run_writes_table_json_chart_and_reports_absent_and_crashing_peers(
        fake_peers, tmp_path, monkeypatch):
    require("matplotlib")
    spinners = []
    competing_load = bench.competing_load

    @contextmanager
    def recorded_load(processes):
        with competing_load(processes) as started:
            spinners.extend(started)
            yield started
    monkeypatch.setattr(bench, "competing_load", recorded_load)
    entries = [bench.Entry(Case("tiny", mode, 2, 3, 4, 5), 1, FRAMEWORKS)
               for mode in ("forward", "train")]
    entries += [bench.Entry(Case("tiny", "stream", 1, 1, 4, 5), 1, FRAMEWORKS),
                bench.Entry(TINY_FIT, 1, ("fastlstm", "torch")),
                bench.Entry(Case("tiny", "forward", 2, 3, 4, 5), None, ("fastlstm",), busy=1)]
    report = bench.run(entries, TINY_TIMING, log=print)
    out_dir = tmp_path / "out"
    markdown = bench.write_report(report, str(out_dir))
    print(markdown)

    statuses = [{f: r["status"] for f, r in row["results"].items()} for row in report["rows"]]
    assert statuses == [
        dict(fastlstm="ok", numpy="ok", torch="absent", onnxruntime="error"),
        dict(fastlstm="ok", numpy="ok", torch="absent", onnxruntime="n/a"),
        dict(fastlstm="ok", numpy="ok", torch="absent", onnxruntime="error"),
        dict(fastlstm="ok", torch="absent"),
        dict(fastlstm="ok"),
    ]
    # one spinner per measurement of the busy entry, each gone once it was measured
    assert len(spinners) == 1 and spinners[0].returncode is not None
    fit, busy = report["rows"][3:]
    assert fit["flops"] is None and fit["gflops"] is None
    assert "sgemm" not in fit["results"]["fastlstm"] and "sgemm" not in busy["results"]["fastlstm"]
    assert busy["busy"] == 1 and busy["threads"] is None
    forward = report["rows"][0]
    assert "simulated: torch is not installed" in forward["results"]["torch"]["message"]
    assert "simulated onnxruntime crash" in forward["results"]["onnxruntime"]["message"]
    assert set(forward["speedup"]) == {"numpy"}
    assert forward["speedup"]["numpy"] == pytest.approx(
        forward["results"]["numpy"]["median_s"] / forward["results"]["fastlstm"]["median_s"])
    assert forward["gflops"] > 0 and forward["sgemm"]["shape"] == [6, 20, 9]
    assert 0 < forward["fraction_of_sgemm"]

    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert saved["machine"]["cpu_model"] and saved["machine"]["usable_cores"] >= 1
    assert saved["frameworks"]["torch"]["status"] == "absent"
    assert (out_dir / "results.md").read_text(encoding="utf-8") == markdown
    assert (out_dir / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sections = _sections(markdown)
    table = [line for line in sections[""].splitlines() if line.startswith("| tiny |")]
    assert len(table) == 3
    assert all("absent" in line for line in table)
    assert "| error |" in table[0] and "| n/a |" in table[1]
    fit = sections["Training: one epoch of `Sequential.fit`"]
    assert "| fastlstm | 1 |" in fit and "| torch | 1 | absent |" in fit
    busy = sections["Busy machine: 1 competing processes"]
    assert "| tiny | forward |" in busy
    assert "simulated onnxruntime crash" in sections["Notes"]


@pytest.mark.slow
def test_a_worker_that_dies_is_an_error(fake_peers):
    (fake_peers / "torch" / "__init__.py").write_text("import os\nos._exit(3)\n")
    result = bench.run_worker("torch", Case("tiny", "forward", 1, 2, 3, 4), 1, TINY_TIMING)
    print(result)
    assert result["status"] == "error"
    assert "exited with code 3" in result["message"]


def test_chart_marks_noisy_speedups_as_the_table_does(tmp_path):
    require("matplotlib")
    machine = dict(threads=2, cpu_model="test CPU")
    s1, s2 = (Case(name, "forward", *bench.S_SHAPES[name]) for name in ("S1", "S2"))
    rows = [bench.summarize(bench.Entry(s1, 2, ("fastlstm", "numpy", "torch")),
                            dict(fastlstm=_ok(0.001), numpy=_ok(0.004), torch=_ok(0.002))),
            bench.summarize(bench.Entry(s2, 2, ("fastlstm", "numpy", "torch")),
                            dict(fastlstm=_ok(0.010), numpy=_ok(0.03, other_cores=0.9),
                                 torch=_ok(0.015)))]
    figure = bench.speedup_figure(dict(rows=rows, machine=machine))
    bar_labels = [text.get_text() for text in figure.axes[0].texts]
    print(bar_labels, [text.get_text() for text in figure.texts])
    # bars per peer (numpy, torch), one per case; only S2 vs numpy was measured while busy
    assert bar_labels == ["4x", "3x *", "2x", "1.5x"]
    assert ["* noisy" in text.get_text() for text in figure.texts] == [True]
    assert "*" in bench.to_markdown(dict(
        rows=rows, machine=dict(machine, simd=[], usable_cores=2, versions={},
                                load_average=[0.0] * 3, load_average_end=[0.0] * 3),
        timing=asdict(bench.QUICK_TIMING), wall_time_s=1.0, frameworks={})).split("| S2 |")[1]

    rows[1]["results"]["numpy"]["other_cores"] = 0.0
    quiet = bench.speedup_figure(dict(rows=rows, machine=machine))
    assert not any("*" in text.get_text() for text in quiet.axes[0].texts + quiet.texts)
    assert bench.write_chart(dict(rows=rows, machine=machine), str(tmp_path / "c.png")) is None
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_output_goes_to_the_user_cache_not_the_working_directory(monkeypatch,
                                                                         tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert bench.default_out_dir() == str(tmp_path / "cache" / "fastlstm" / "bench")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert bench.default_out_dir() == str(tmp_path / "home" / ".cache" / "fastlstm" / "bench")


def test_missing_peers_names_each_with_its_install_command(monkeypatch):
    require("torch")
    require("onnxruntime")
    require("onnx")
    assert bench.missing_peers() == {}
    monkeypatch.setitem(sys.modules, "torch", None)    # import torch now raises ImportError
    monkeypatch.setitem(sys.modules, "onnx", None)     # ONNX Runtime's worker needs onnx too
    missing = bench.missing_peers()
    print(missing)
    assert missing == {
        "torch": "pip install torch --index-url https://download.pytorch.org/whl/cpu",
        "onnxruntime": "pip install onnx onnxruntime"}


def test_chart_is_skipped_with_a_note_without_peers(tmp_path):
    report = dict(rows=[dict(speedup={})], machine={})
    note = bench.write_chart(report, str(tmp_path / "speedup.png"))
    print(note)
    assert note.startswith("no speedup chart")
    assert not (tmp_path / "speedup.png").exists()


@pytest.mark.slow
def test_fit_epoch_of_fastlstm_and_torch_trains_the_same_char_lm():
    """One epoch of each on the same tokens: a first-epoch loss near ln(vocabulary)."""
    require("torch")
    x, y = make_tokens(TINY_FIT)
    assert x.shape == y.shape == (10, 5) and np.array_equal(x[:, 1:], y[:, :-1])
    assert 0 <= x.min() and x.max() < 7
    losses = {f: build_call(f, TINY_FIT, 1)() for f in ("fastlstm", "torch")}
    print(losses, "ln V =", math.log(7))
    for loss in losses.values():
        assert abs(loss - math.log(7)) < 0.3


def test_worker_env_sets_or_removes_the_thread_variables(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("FASTLSTM_TEST_OTHER", "kept")
    assert {name: bench.worker_env(3)[name] for name in bench.THREAD_ENV} == dict.fromkeys(
        bench.THREAD_ENV, "3")
    default = bench.worker_env(None)
    assert not set(bench.THREAD_ENV) & set(default)
    assert default["FASTLSTM_TEST_OTHER"] == "kept"


def _alive(pid):
    """Whether process ``pid`` exists and is not a zombie (reads /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")


@pytest.mark.slow
@needs_proc
def test_competing_load_runs_spinners_and_kills_them_on_interrupt():
    with pytest.raises(KeyboardInterrupt):
        with bench.competing_load(2) as spinners:
            assert len(spinners) == 2 and all(_alive(p.pid) for p in spinners)
            raise KeyboardInterrupt
    assert all(p.returncode is not None and not _alive(p.pid) for p in spinners)


@pytest.mark.slow
@needs_proc
def test_spinners_exit_by_themselves_when_the_runner_is_killed():
    code = ("import os, signal\n"
            "from fastlstm import bench\n"
            "with bench.competing_load(1) as spinners:\n"
            "    print(spinners[0].pid, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    pid = int(proc.stdout)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = _alive(pid)
    if survived:
        os.kill(pid, signal.SIGKILL)
    assert not survived


def _ok(median, settled=True, other_cores=0.0, mean=None):
    return dict(status="ok", median_s=median, q1_s=0.99 * median, q3_s=1.01 * median,
                mean_s=median if mean is None else mean, settled=settled,
                other_cores=other_cores)


def _report(rows):
    """A 2-thread quick-run report of (Entry, results) rows."""
    return dict(
        machine=dict(cpu_model="test CPU", usable_cores=2, simd=[], threads=2,
                     load_average=[0.0] * 3, load_average_end=[0.0] * 3,
                     versions=dict(python="3")),
        timing=asdict(bench.QUICK_TIMING), wall_time_s=1.0, frameworks={},
        rows=[bench.summarize(entry, results) for entry, results in rows])


def test_markdown_sections_scaling_fit_and_busy():
    """Thread scaling has S3 forward and train and the fit; fit and busy rows have their own
    sections and stay out of the LSTM table."""
    s3 = {mode: Case("S3", mode, *bench.S_SHAPES["S3"]) for mode in ("forward", "train")}
    s1 = Case("S1", "forward", *bench.S_SHAPES["S1"])
    s2 = Case("S2", "forward", *bench.S_SHAPES["S2"])
    fit = bench.CHARLM
    rows = [
        (bench.Entry(s3["forward"], 2, ("fastlstm",)), dict(fastlstm=_ok(0.10))),
        (bench.Entry(s3["train"], 2, ("fastlstm",)), dict(fastlstm=_ok(0.30))),
        (bench.Entry(fit, 2, ("fastlstm", "torch")),
         dict(fastlstm=_ok(0.8), torch=_ok(1.2, settled=False))),
        (bench.Entry(fit, None, ("fastlstm",)), dict(fastlstm=_ok(0.9))),
        (bench.Entry(s3["forward"], 1, ("fastlstm",)), dict(fastlstm=_ok(0.18))),
        (bench.Entry(s3["train"], 1, ("fastlstm",)), dict(fastlstm=_ok(0.51))),
        (bench.Entry(fit, 1, ("fastlstm",)), dict(fastlstm=_ok(0.6))),
        (bench.Entry(s1, None, ("fastlstm", "torch"), busy=2),
         dict(fastlstm=_ok(0.0012, other_cores=0.5), torch=_ok(0.003))),
        (bench.Entry(s1, 1, ("fastlstm",), busy=2), dict(fastlstm=_ok(0.001))),
        # two groups of times (a lost time slice or not): the medians fall in different ones
        (bench.Entry(s2, None, ("fastlstm",), busy=2), dict(fastlstm=_ok(0.0108, mean=0.0099))),
        (bench.Entry(s2, 1, ("fastlstm",), busy=2), dict(fastlstm=_ok(0.0068, mean=0.0094))),
        (bench.Entry(fit, None, ("fastlstm", "torch"), busy=2),
         dict(fastlstm=_ok(2.0), torch=_ok(3.0))),
        (bench.Entry(fit, 1, ("fastlstm",), busy=2), dict(fastlstm=_ok(1.0))),
    ]
    report = _report(rows)
    sections = _sections(bench.to_markdown(report))
    print("\n## ".join(sections.values()))

    table = [line for line in sections[""].splitlines() if line.startswith("| S")]
    assert [line.split(" | ")[:2] + [line.split(" | ")[7]] for line in table] == [
        ["| S3", "forward", "2"], ["| S3", "train", "2"],
        ["| S3", "forward", "1"], ["| S3", "train", "1"]]
    assert "within 5% of the 3 before (at least 0.05 s, at most 1 s)" in sections[""]

    scaling = sections["Thread scaling (fastlstm)"].splitlines()
    assert "| S3 | forward | 180 ms | 100 ms | 1.80x |" in scaling
    assert "| S3 | train | 510 ms | 300 ms | 1.70x |" in scaling
    assert "| charlm | fit | 600 ms | 800 ms | 0.75x |" in scaling

    fit_lines = [line for line in sections["Training: one epoch of `Sequential.fit`"].splitlines()
                 if line.startswith("| fastlstm") or line.startswith("| torch")]
    assert fit_lines == ["| fastlstm | default | 900 ms ±1% | 1.33x |",
                         "| fastlstm | 1 | 600 ms ±1% | 2x |",
                         "| fastlstm | 2 | 800 ms ±1% | 1.5x |",
                         "| torch | 2 | 1.2 s ±1% | — |"]

    busy = sections["Busy machine: 2 competing processes"].splitlines()
    assert "| S1 | forward | 1.2 ms ±1% * | 1 ms ±1% | 1.20x | 1.20x | yes | 3 ms ±1% |" in busy
    assert "| S2 | forward | 10.8 ms ±1% | 6.8 ms ±1% | 1.59x | 1.05x | yes | — |" in busy
    assert "| charlm | fit | 2 s ±1% | 1 s ±1% | 2.00x | 2.00x | no | 3 s ±1% |" in busy
    notes = sections["Notes"]
    assert "1 of 16 warm-ups stopped at the 1 s cap" in notes
    assert "kept 0.5-0.5 cores busy (on average) during 1 of 16 measurements" in notes


def test_call_memory_is_the_peak_a_call_adds_to_the_process():
    """A call that fills and frees 80 MB reports about 80 MB (76.3 MiB), however much the
    process held at its peak before."""
    before = np.ones(20_000_000)    # an earlier peak of 160 MB
    del before
    mib = call_memory_mib(lambda: np.ones(10_000_000).sum())
    if not os.path.exists("/proc/self/clear_refs"):
        assert mib is None
        return
    assert 70 < mib < 100


def test_markdown_memory_section_lists_each_framework_at_the_runs_threads():
    train = Case("S3", "train", *bench.S_SHAPES["S3"])
    rows = [(bench.Entry(train, 2, ("fastlstm", "torch")),
             dict(fastlstm=dict(_ok(0.3), memory_mib=160.4),
                  torch=dict(_ok(0.4), memory_mib=248.0))),
            (bench.Entry(train, 1, ("fastlstm",)), dict(fastlstm=dict(_ok(0.6), memory_mib=150.0))),
            (bench.Entry(train, None, ("fastlstm",), busy=2), dict(fastlstm=_ok(0.7)))]
    report = _report(rows)
    memory = _sections(bench.to_markdown(report))["Memory of one call"].splitlines()
    assert [line for line in memory if line.startswith("| S")] == ["| S3 | train | 160 | 248 |"]


def test_round_orders_alternate_the_order_given_and_its_reverse():
    assert bench.round_orders("ABCD", 2) == [list("ABCD"), list("DCBA")]
    assert bench.round_orders("ABC", 3) == [list("ABC"), list("CBA"), list("ABC")]
    assert bench.round_orders("ABCD", 1) == [list("ABCD")]
    assert bench.round_orders("A", 2) == [["A"]]        # a single measurement: one round
    for rounds in (0, 1.5, "2"):
        with pytest.raises(ValueError, match=f"rounds: expected an int >= 1, got {rounds!r}"):
            bench.round_orders("AB", rounds)


def test_round_timing_shares_out_the_budget_and_repeats_not_the_warm_up():
    half = bench.round_timing(bench.QUICK_TIMING, 2)
    assert (half.budget_s, half.min_repeats, half.max_repeats) == (0.15, 2, 50)
    assert (half.warmup_min_s, half.warmup_max_s, half.settle_tolerance) == (0.05, 1.0, 0.05)
    assert bench.round_timing(bench.QUICK_TIMING, 1) == bench.QUICK_TIMING


def _round(samples, **fields):
    """One round's result as a worker reports it, with these per-call ``samples``."""
    return dict(status="ok", samples_s=list(samples), **summary(samples), repeats=len(samples),
                inner=1, warmup_s=0.1, warmup_calls=4, settled=True, other_cores=0.0,
                **fields)


class FakeWorker:
    """Stands in for :class:`bench.Worker`: records every measurement in ``log`` and answers
    with ``samples[(framework, threads)][round]`` (fastlstm with its sgemm too)."""

    log = []
    samples = {}
    SGEMM = [[1e-3, 1.1e-3, 1.2e-3], [1.5e-3, 1.6e-3, 1.7e-3]]   # 2nd round 38% slower

    def __init__(self, framework, case, threads, timing, busy=0):
        self.framework, self.case, self.threads, self.timing = framework, case, threads, timing
        self.rounds = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass

    def measure(self):
        key = (self.framework, self.threads)
        self.log.append((self.case.name, *key, self.timing.budget_s))
        times = self.samples[key][self.rounds]
        extra = {}
        if self.framework == "fastlstm":
            extra["sgemm"] = dict(_round(self.SGEMM[self.rounds]), shape=[1, 2, 3],
                                  flops=self.case.forward_flops())
        self.rounds += 1
        return _round(times, framework=self.framework, threads=self.threads, version=None,
                      threadpools=None, **extra)


LIMITS = dict(isa="avx512", fma_peak_gflops={"1": 100.0, "2": 200.0}, l2_read_gbps=110.0,
              core_round_trip_ns=55.0, seconds=0.01)


def fake_limits(threads, seconds, script=bench.PROBE_SCRIPT):
    """Fixed limits at the start; a slower round trip from the end-of-run probe."""
    if script == bench.ROUND_TRIP_SCRIPT:
        return dict(core_round_trip_ns=340.0, seconds=seconds)
    return dict(LIMITS)


@pytest.fixture
def fake_workers(monkeypatch):
    """bench.run with :class:`FakeWorker` and fixed machine limits; S1 and S2 shapes."""
    monkeypatch.setattr(bench, "Worker", FakeWorker)
    monkeypatch.setattr(bench, "machine_limits", fake_limits)
    monkeypatch.setattr(FakeWorker, "log", [])
    s1, s2 = (Case(name, "forward", *bench.S_SHAPES[name]) for name in ("S1", "S2"))
    ms = 1e-3
    monkeypatch.setattr(FakeWorker, "samples", {
        ("fastlstm", 2): [[1 * ms, 2 * ms, 3 * ms], [4 * ms, 5 * ms, 6 * ms]],
        ("numpy", 2): [[10 * ms] * 3, [10.5 * ms] * 3],
        ("torch", 2): [[2 * ms] * 3, [2.5 * ms] * 3],
        ("onnxruntime", 2): [[3 * ms] * 3, [3 * ms] * 3],
        ("fastlstm", 1): [[7 * ms] * 3, [7 * ms] * 3]})
    entries = [bench.Entry(s1, 2, FRAMEWORKS), bench.Entry(s2, 2, ("fastlstm",)),
               bench.Entry(s1, 1, ("fastlstm",))]
    return entries


def test_run_measures_a_case_in_rounds_forwards_then_backwards(fake_workers):
    """A B C D, then D C B A, each with half the budget; the 1-thread fastlstm of the same
    case joins its rounds (the thread scaling compares them); S2's lone fastlstm runs once
    with the whole budget."""
    bench.run(fake_workers, bench.QUICK_TIMING, log=print, rounds=2)
    s1_order = [("S1", f, 2, 0.15) for f in FRAMEWORKS] + [("S1", "fastlstm", 1, 0.15)]
    assert FakeWorker.log == s1_order + s1_order[::-1] + [("S2", "fastlstm", 2, 0.3)]


def test_run_pools_the_rounds_and_keeps_each_rounds_median(fake_workers, tmp_path):
    report = bench.run(fake_workers, bench.QUICK_TIMING, log=print, rounds=2)
    bench.write_report(report, str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rounds"] == 2 and saved["machine"]["limits"] == LIMITS
    ours = saved["rows"][0]["results"]["fastlstm"]
    print(json.dumps(ours, indent=1))
    assert ours["median_s"] == pytest.approx(3.5e-3)          # of 1, 2, 3, 4, 5, 6 ms
    assert (ours["q1_s"], ours["q3_s"]) == (pytest.approx(2.25e-3), pytest.approx(4.75e-3))
    assert (ours["min_s"], ours["max_s"], ours["repeats"]) == (1e-3, 6e-3, 6)
    assert [r["median_s"] for r in ours["rounds"]] == [2e-3, 5e-3]
    assert "samples_s" not in ours and "samples_s" not in ours["rounds"][0]
    sgemm = ours["sgemm"]
    assert sgemm["median_s"] == pytest.approx(1.35e-3) and sgemm["shape"] == [1, 2, 3]
    assert [r["median_s"] for r in sgemm["rounds"]] == [1.1e-3, 1.6e-3]
    assert saved["rows"][0]["speedup"]["torch"] == pytest.approx(2.25e-3 / 3.5e-3)
    assert saved["rows"][1]["results"]["fastlstm"]["rounds"] == [
        dict(median_s=2e-3, q1_s=1.5e-3, q3_s=2.5e-3, mean_s=2e-3, repeats=3, inner=1,
             warmup_s=0.1, warmup_calls=4, settled=True, other_cores=0.0)]


def test_round_medians_apart_by_more_than_a_tenth_get_a_note(fake_workers, tmp_path):
    """fastlstm (2 -> 5 ms), its sgemm (+45%) and torch (+25%) drifted; NumPy (+5%), ONNX
    Runtime and the single-round S2 did not."""
    markdown = bench.write_report(bench.run(fake_workers, bench.QUICK_TIMING, log=print, rounds=2),
                                  str(tmp_path))
    print(markdown)
    notes = [line for line in _sections(markdown)["Notes"].splitlines() if "drifted" in line]
    assert notes == [
        "- S1 forward fastlstm (2 thr): round medians 2 ms, 5 ms differ by 150%: the "
        "machine's speed drifted between the rounds",
        "- S1 forward sgemm in fastlstm's process (2 thr): round medians 1.1 ms, 1.6 ms "
        "differ by 45%: the machine's speed drifted between the rounds",
        "- S1 forward torch (2 thr): round medians 2 ms, 2.5 ms differ by 25%: the machine's "
        "speed drifted between the rounds",
        "- S1 forward sgemm in fastlstm's process (1 thr): round medians 1.1 ms, 1.6 ms "
        "differ by 45%: the machine's speed drifted between the rounds"]
    assert "Each case ran in 2 rounds" in markdown
    assert "- 0 of" not in markdown and "warm-ups stopped" not in markdown


def test_one_round_measures_each_framework_once_with_the_whole_budget(fake_workers):
    report = bench.run(fake_workers, bench.QUICK_TIMING, log=print, rounds=1)
    assert FakeWorker.log == ([("S1", f, 2, 0.3) for f in FRAMEWORKS]
                              + [("S1", "fastlstm", 1, 0.3), ("S2", "fastlstm", 2, 0.3)])
    ours = report["rows"][0]["results"]["fastlstm"]
    assert ours["median_s"] == 2e-3 and [r["median_s"] for r in ours["rounds"]] == [2e-3]
    markdown = bench.to_markdown(report)
    assert "Each framework ran once per case, in the order of the table." in markdown
    assert "drifted" not in markdown
    with pytest.raises(ValueError, match="rounds: expected an int >= 1, got 0"):
        bench.run(fake_workers, bench.QUICK_TIMING, rounds=0)


def test_markdown_shows_the_fma_peak_column_and_the_measured_limits(fake_workers):
    """% of FMA peak divides by the peak at the row's threads; the limits are stated in the
    header and under the table."""
    report = bench.run(fake_workers, bench.QUICK_TIMING, log=print, rounds=2)
    sections = _sections(bench.to_markdown(report))
    print(sections[""])
    lines = sections[""].splitlines()
    limits = ("FMA peak 200 GFLOP/s on 2 threads (100 on 1; float32, avx512), L2 read 110 "
              "GB/s per core, core-to-core round trip 55 ns")
    assert f"- Limits of this machine, measured at the start: {limits}" in lines
    assert next(line for line in lines if line.startswith("- Threads per framework")).endswith(
        "; core-to-core round trip at end 340 ns")
    header = next(line for line in lines if line.startswith("| case |"))
    assert header.endswith("| GFLOP/s | % of FMA peak | sgemm GFLOP/s | % of sgemm |")
    rows = {(cells[0], cells[7]): cells for cells in (
        line.strip("| ").split(" | ") for line in lines if line.startswith("| S"))}
    for (name, threads), cells in rows.items():
        gflops = {("S1", "2"): report["rows"][0], ("S2", "2"): report["rows"][1],
                  ("S1", "1"): report["rows"][2]}[(name, threads)]["gflops"]
        peak = LIMITS["fma_peak_gflops"][threads]
        assert cells[-3] == f"{gflops / peak * 100:.0f}%", (name, threads)
    table_end = max(i for i, line in enumerate(lines) if line.startswith("| "))
    assert lines[table_end + 2].startswith(f"Limits of this machine: {limits}. `% of FMA peak`")

    report["machine"]["limits"] = dict(error="the probe exited with code 1: boom")
    unmeasured = bench.to_markdown(report)
    assert "measured at the start: not measured (the probe exited with code 1: boom)" in unmeasured
    assert all(line.split(" | ")[-3] == "—"
               for line in _sections(unmeasured)[""].splitlines() if line.startswith("| S"))


@pytest.mark.slow
def test_machine_limits_come_from_a_probe_process_at_1_and_n_threads():
    limits = bench.machine_limits(2, 0.01)
    print(limits)
    assert set(limits) == {"isa", "fma_peak_gflops", "l2_read_gbps", "core_round_trip_ns",
                           "seconds"}
    assert set(limits["fma_peak_gflops"]) == {"1", "2"}
    assert all(math.isfinite(v) and v > 0
               for v in (*limits["fma_peak_gflops"].values(), limits["l2_read_gbps"],
                         limits["core_round_trip_ns"]))
    assert bench.machine_limits(1, 0.01)["core_round_trip_ns"] is None
    end = bench.machine_limits(2, 0.01, script=bench.ROUND_TRIP_SCRIPT)
    assert set(end) == {"core_round_trip_ns", "seconds"} and end["core_round_trip_ns"] > 0


@pytest.mark.slow
def test_a_worker_process_serves_every_round_and_ends_when_closed():
    case = Case("tiny", "forward", 2, 3, 4, 5)
    with bench.Worker("fastlstm", case, 1, TINY_TIMING) as worker:
        first = worker.measure()
        pid = worker.proc.pid
        second = worker.measure()
        assert worker.proc.pid == pid and worker.proc.returncode is None
    print(first, second)
    assert first["status"] == second["status"] == "ok"
    assert len(first["samples_s"]) == first["repeats"] and "sgemm" in second
    assert "cpu_s" not in first and first["other_cores"] is not None
    assert worker.proc.returncode == 0


@pytest.mark.slow
def test_a_worker_that_hangs_is_killed_and_reported(fake_peers):
    (fake_peers / "torch" / "__init__.py").write_text("import time\ntime.sleep(60)\n")
    with bench.Worker("torch", Case("tiny", "forward", 1, 2, 3, 4), 1, TINY_TIMING,
                      timeout=0.5) as worker:
        result = worker.measure()
        assert worker.measure() is worker.failure            # no second process
    print(result)
    assert result["status"] == "error" and result["message"] == "timed out after 0.5 s"
    assert worker.proc.returncode is not None


@pytest.mark.parametrize("quick, expected", [(True, bench.QUICK_ROUNDS), (False, bench.ROUNDS)])
def test_main_runs_four_rounds_and_two_with_quick(monkeypatch, tmp_path, quick, expected):
    """Without --rounds a full run alternates the frameworks over four rounds, a quick
    look over two."""
    seen = []

    def fake_run(entries, timing, rounds):
        seen.append(rounds)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench, "run", fake_run)
    with pytest.raises(RuntimeError, match="stop here"):
        bench.main(quick=quick, frameworks=["fastlstm"], out_dir=str(tmp_path))
    assert seen == [expected]
    assert (bench.QUICK_ROUNDS, bench.ROUNDS) == (2, 4)
