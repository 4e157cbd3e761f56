"""The benchmark instrument: cases, timing, workers, the runner's outputs, absent/crashing peers."""
import json
import os

import numpy as np
import pytest
from conftest import assert_close, require

from fastlstm import bench, reference
from fastlstm._bench_worker import (BUILDERS, FRAMEWORKS, Case, Timing, make_data, make_params,
                                    measure)

TINY_TIMING = Timing(warmup_s=0.0, budget_s=0.01, min_repeats=2, max_repeats=3, min_repeat_s=0.0)


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
])
def test_case_rejects_bad_fields(fields, message):
    base = dict(name="c", mode="forward", batch=1, seq_len=1, input_size=3, hidden_size=4)
    with pytest.raises(ValueError, match=message):
        Case(**{**base, **fields})


def test_plan_quick_full_and_filters():
    quick = bench.plan(quick=True, threads=2)
    assert [(e.case.name, e.case.mode) for e in quick] == [
        ("S1", "forward"), ("S1", "train"), ("S2", "forward"), ("S2", "train"),
        ("S3", "forward"), ("S3", "train"), ("S1", "stream")]
    assert all(e.threads == 2 and e.frameworks == FRAMEWORKS for e in quick)

    full = bench.plan(quick=False, threads=2)
    one_thread = [e for e in full if e.threads == 1]
    assert [(e.case.name, e.case.mode, e.frameworks) for e in one_thread] == [
        ("S3", "forward", ("fastlstm",)), ("S3", "train", ("fastlstm",))]
    names = {e.case.name for e in full}
    assert {"S2-2layer", "S2-bidir", *bench.DEEPBENCH_SHAPES} <= names
    assert not [e for e in bench.plan(quick=False, threads=1) if e.frameworks == ("fastlstm",)]

    streams = bench.plan(threads=2, frameworks=["numpy", "fastlstm"], modes=["stream"])
    assert {e.case.mode for e in streams} == {"stream"}
    assert all(e.frameworks == ("fastlstm", "numpy") for e in streams)
    with pytest.raises(ValueError, match="frameworks"):
        bench.plan(frameworks=["tensorflow"])
    with pytest.raises(ValueError, match="modes"):
        bench.plan(modes=[])
    with pytest.raises(ValueError, match="threads"):
        bench.plan(threads=0)
    assert len(bench.plan(True, 2, frameworks=iter(["numpy"]), modes=iter(["train"]))) == 3


def test_measure_repeats_and_batches_short_calls():
    calls = []
    stats = measure(lambda: calls.append(1), Timing(warmup_s=0.0, budget_s=0.05, min_repeats=3,
                                                    max_repeats=7, min_repeat_s=0.001))
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


def test_run_writes_table_json_chart_and_reports_absent_and_crashing_peers(fake_peers, tmp_path):
    require("matplotlib")
    entries = [bench.Entry(Case("tiny", mode, 2, 3, 4, 5), 1, FRAMEWORKS)
               for mode in ("forward", "train")]
    entries.append(bench.Entry(Case("tiny", "stream", 1, 1, 4, 5), 1, FRAMEWORKS))
    report = bench.run(entries, TINY_TIMING, log=print)
    out_dir = tmp_path / "out"
    markdown = bench.write_report(report, str(out_dir))
    print(markdown)

    statuses = [{f: r["status"] for f, r in row["results"].items()} for row in report["rows"]]
    assert statuses == [
        dict(fastlstm="ok", numpy="ok", torch="absent", onnxruntime="error"),
        dict(fastlstm="ok", numpy="ok", torch="absent", onnxruntime="n/a"),
        dict(fastlstm="ok", numpy="ok", torch="absent", onnxruntime="error"),
    ]
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
    table = [line for line in markdown.splitlines() if line.startswith("| tiny |")]
    assert len(table) == 3
    assert all("absent" in line for line in table)
    assert "| error |" in table[0] and "| n/a |" in table[1]
    assert "simulated onnxruntime crash" in markdown


def test_a_worker_that_dies_is_an_error(fake_peers):
    (fake_peers / "torch" / "__init__.py").write_text("import os\nos._exit(3)\n")
    result = bench.run_worker("torch", Case("tiny", "forward", 1, 2, 3, 4), 1, TINY_TIMING)
    print(result)
    assert result["status"] == "error"
    assert "exited with code 3" in result["message"]


def test_chart_is_skipped_with_a_note_without_peers(tmp_path):
    report = dict(rows=[dict(speedup={})], machine={})
    note = bench.write_chart(report, str(tmp_path / "speedup.png"))
    print(note)
    assert note.startswith("no speedup chart")
    assert not (tmp_path / "speedup.png").exists()
