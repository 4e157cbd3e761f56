"""The ``fastlstm`` command line: --version, info, bench."""
import subprocess
import sys

import pytest
from conftest import require

import fastlstm
from fastlstm import bench
from fastlstm._kernels import openmp as _openmp
from fastlstm.__main__ import main


@pytest.fixture(autouse=True)
def short_probe(monkeypatch):
    """The machine probe of every bench run here takes hundredths of a second."""
    monkeypatch.setattr(bench, "PROBE_S", 0.01)


@pytest.mark.slow
def test_version_from_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "fastlstm", "--version"],
                          capture_output=True, text=True, timeout=60)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"fastlstm {fastlstm.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "bench" in capsys.readouterr().out


def test_info_reports_build_threads_and_libraries(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert out.startswith(f"fastlstm {fastlstm.__version__}")
    expected_openmp = "OpenMP: on" if _openmp.openmp_enabled() else "OpenMP: off"
    assert expected_openmp in out
    assert f"fastlstm.get_num_threads() = {fastlstm.get_num_threads()}" in out
    assert "SIMD:" in out
    pytest.importorskip("threadpoolctl")
    assert "BLAS/OpenMP libraries (threadpoolctl):" in out
    assert "  blas: " in out  # SciPy's BLAS is loaded by the kernels' module


def test_info_of_a_serial_build_without_threadpoolctl(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import now raises ImportError
    monkeypatch.setattr(_openmp, "openmp_enabled", lambda: False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "threadpoolctl not installed" in out
    assert "OpenMP: off (serial build" in out
    # The thread count is the compiled kernels' (1 in a real serial build, which
    # .ci/sdist_smoke.py checks); the patch above only changes what info reports on OpenMP.
    assert f"fastlstm.get_num_threads() = {fastlstm.get_num_threads()}" in out


@pytest.mark.parametrize("args, message", [
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--threads", "two"], "--threads"),
    (["bench", "--threads", "4096"], "--threads"),
    (["bench", "--frameworks", "tensorflow"], "--frameworks"),
    (["bench", "--modes", "backward"], "--modes"),
    (["bench", "--busy", "0"], "--busy"),
    (["bench", "--dtype", "float16"], "--dtype"),
    (["bench", "--dtype", "int8", "--busy", "1"], "--busy"),
])
def test_bench_rejects_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    print(err)
    assert exit_info.value.code == 2
    assert message in err


@pytest.mark.slow
def test_bench_quick_runs_and_writes_its_files(tmp_path, monkeypatch, capsys):
    """The CLI wiring, on tiny shapes standing in for S1-S3."""
    monkeypatch.setattr(bench, "S_SHAPES", {"T1": (1, 3, 4, 5), "T2": (2, 2, 3, 8)})
    monkeypatch.setattr(bench, "QUICK_TIMING", bench.Timing(
        warmup_min_s=0.0, warmup_max_s=0.0, budget_s=0.01, min_repeats=2, max_repeats=3,
        min_repeat_s=0.0))
    out_dir = tmp_path / "bench-out"
    status = main(["bench", "--quick", "--threads", "1", "--out", str(out_dir), "--busy", "1",
                   "--frameworks", "fastlstm", "numpy", "--modes", "forward"])
    captured = capsys.readouterr()
    print(captured.out)
    assert status == 0
    main_table, busy = captured.out.split("## Busy machine: 1 competing processes")
    memory = main_table.split("## Memory of one call")[1]
    main_table = main_table.split("## Memory of one call")[0]
    assert [line.split(" | ")[:2] for line in memory.splitlines() if line.startswith("| T")] == [
        ["| T1", "forward"], ["| T2", "forward"]]
    rows = [line for line in main_table.splitlines() if line.startswith("| T")]
    assert [line.split(" | ")[:2] for line in rows] == [["| T1", "forward"], ["| T2", "forward"]]
    assert "| fastlstm | numpy | vs numpy |" in main_table
    assert "torch" not in main_table.split("| case |")[1]
    assert [line.split(" | ")[:2] for line in busy.splitlines() if line.startswith("| T")] == [
        ["| T1", "forward"], ["| T2", "forward"]]
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["results.json", "results.md", "speedup.png"]


@pytest.mark.slow
def test_bench_runs_without_torch_and_says_how_to_add_it(tmp_path, monkeypatch, capsys):
    """The default run with torch hidden: fastlstm, NumPy and ONNX Runtime side by side, no
    torch column, a note with the CPU-only install command; output goes to the user cache."""
    require("onnxruntime")
    require("onnx")
    monkeypatch.setitem(sys.modules, "torch", None)      # import torch now raises ImportError
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "S_SHAPES", {"T1": (1, 3, 4, 5)})
    monkeypatch.setattr(bench, "QUICK_TIMING", bench.Timing(
        warmup_min_s=0.0, warmup_max_s=0.0, budget_s=0.01, min_repeats=2, max_repeats=3,
        min_repeat_s=0.0))
    status = main(["bench", "--quick", "--threads", "1", "--modes", "forward"])
    captured = capsys.readouterr()
    print(captured.out, captured.err)
    assert status == 0
    assert "| fastlstm | numpy | onnxruntime | vs numpy | vs onnxruntime |" in captured.out
    assert "torch |" not in captured.out
    command = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert f"- torch: not installed, left out of this run; to add it: `{command}`" in captured.out
    assert command in captured.err
    out_dir = tmp_path / "cache" / "fastlstm" / "bench"
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.json", "results.md",
                                                          "speedup.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]   # nothing in the cwd


def test_bench_dtype_quick_runs_the_reduced_precision_rows(tmp_path, monkeypatch, capsys):
    """--dtype int8 --quick on tiny shapes standing in for S1 and S3."""
    monkeypatch.setattr(bench, "S_SHAPES", {"S1": (1, 3, 4, 5), "S3": (2, 2, 3, 8)})
    monkeypatch.setattr(bench, "QUICK_TIMING", bench.Timing(
        warmup_min_s=0.0, warmup_max_s=0.0, budget_s=0.01, min_repeats=2, max_repeats=3,
        min_repeat_s=0.0))
    status = main(["bench", "--quick", "--threads", "1", "--out", str(tmp_path), "--dtype",
                   "int8", "--frameworks", "fastlstm", "numpy"])
    captured = capsys.readouterr()
    print(captured.out)
    assert status == 0
    table = captured.out.split("\n## ")[0]     # the LSTM table, before the other sections
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| S")]
    assert [(r[0], r[1], r[8].split()[0]) for r in rows] == [
        ("| S1", "forward", "float32"), ("| S3", "forward", "float32"),
        ("| S1", "stream", "float32"), ("| S1", "forward", "int8"),
        ("| S3", "forward", "int8"), ("| S1", "stream", "int8")]
    assert "| fastlstm |" in captured.out and "numpy |" not in captured.out


def test_bench_rounds_option_reaches_the_runner(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "main", lambda **options: calls.append(options) or 0)
    assert main(["bench", "--rounds", "1"]) == 0
    assert main(["bench"]) == 0
    assert [options["rounds"] for options in calls] == [1, None]   # None: bench.main's default


def test_bench_rejects_zero_rounds(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--rounds", "0"])
    assert exit_info.value.code == 2
    assert "--rounds: expected an integer >= 1, got 0" in capsys.readouterr().err
