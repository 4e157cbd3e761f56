"""The ``fastlstm`` command: ``--version``, ``info`` and ``bench``.

``python -m fastlstm bench`` (or the ``fastlstm`` console script) runs the side-by-side
benchmark of :mod:`fastlstm.bench`; ``fastlstm info`` describes the build and the threads.
"""
import argparse
import os
import sys
from typing import Sequence

import fastlstm

from . import bench


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastlstm", description="fastlstm: a fast CPU LSTM for Python.")
    parser.add_argument("--version", action="version", version=f"fastlstm {fastlstm.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("info", help="version, build, SIMD, OpenMP, BLAS and thread counts",
                        description="Describe the build, the CPU and the thread pools.")
    run = commands.add_parser(
        "bench", help="benchmark fastlstm against NumPy, PyTorch and ONNX Runtime",
        description="Time fastlstm and its peers side by side, each in its own process with "
                    "the same thread count; print a Markdown table and write results.md, "
                    "results.json and speedup.png into --out. Peers that are not installed "
                    "are left out, with a note saying how to add them.")
    run.add_argument("--quick", action="store_true",
                     help="S1-S3 forward and train, the S1 streaming step and the char-LM fit "
                          "epoch at N threads, shorter warm-ups and fewer repeats")
    run.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                     help="threads per framework (default: fastlstm.get_num_threads())")
    run.add_argument("--out", default=None, metavar="DIR",
                     help="output directory, created if needed (default: "
                          "$XDG_CACHE_HOME/fastlstm/bench, i.e. ~/.cache/fastlstm/bench)")
    run.add_argument("--frameworks", nargs="+", choices=bench.FRAMEWORKS, default=None,
                     metavar="NAME",
                     help=f"frameworks to run, from {', '.join(bench.FRAMEWORKS)} (default: "
                          "all that are installed)")
    run.add_argument("--modes", nargs="+", choices=bench.MODES, default=list(bench.MODES),
                     metavar="MODE",
                     help=f"modes to run, from {', '.join(bench.MODES)} (default: all)")
    run.add_argument("--busy", type=_positive_int, default=0, metavar="N",
                     help="also measure S1-S3 forward and the fit epoch while N CPU-bound "
                          "processes spin: fastlstm with default threads and with 1, PyTorch "
                          "with default threads (default: no busy section)")
    run.add_argument("--dtype", choices=bench.DTYPES, default="float32",
                     help="bfloat16 or int8: time fl.quantize on S1/S3 forward and the stream "
                          "step beside PyTorch's bfloat16 or quantize_dynamic int8 LSTM and "
                          "ONNX Runtime's int8 DynamicQuantizeLSTM, after float32 rows "
                          "(default: float32, the main benchmark)")
    run.add_argument("--rounds", type=_positive_int, default=None, metavar="N",
                     help="rounds per case, alternately in the order given and reversed "
                          "(A B C D, D C B A), each with 1/N of the repeats, samples pooled; "
                          f"1: each framework once (default: {bench.ROUNDS}, "
                          f"{bench.QUICK_ROUNDS} with --quick)")
    return parser


def info_lines() -> list[str]:
    """What ``fastlstm info`` prints, one string per line."""
    from ._kernels import lstm as _lstm_kernels, openmp as _openmp, quant as _quant
    from ._threads import usable_cores

    if _openmp.openmp_enabled():
        openmp = f"on (omp max threads {_openmp.max_threads()})"
    else:
        openmp = "off (serial build: the kernels run on one thread)"
    simd = bench.simd_flags()
    lines = [
        f"fastlstm {fastlstm.__version__} ({os.path.dirname(fastlstm.__file__)})",
        f"Python {sys.version.split()[0]}, NumPy {bench.package_version('numpy')}, "
        f"SciPy {bench.package_version('scipy')}",
        f"OpenMP: {openmp}",
        f"CPU: {bench.cpu_model()}; SIMD: {' '.join(simd) if simd else 'unknown'}",
        f"Recurrent products: packed panels, {_lstm_kernels.packed_isa()} micro-kernels",
        "Quantised products (fl.quantize): " + ", ".join(
            f"{dtype} {_quant.quantized_path(dtype)}" for dtype in _quant.DTYPES),
        f"Threads: fastlstm.get_num_threads() = {fastlstm.get_num_threads()}, "
        f"usable cores {usable_cores()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
    ]
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return lines + ["BLAS/OpenMP libraries: threadpoolctl not installed"]
    lines.append("BLAS/OpenMP libraries (threadpoolctl):")
    for pool in threadpool_info():
        details = ", ".join(str(pool[key]) for key in ("version", "architecture", "threading_layer")
                            if pool.get(key))
        lines.append(f"  {pool['user_api']}: {pool['prefix']}{f' ({details})' if details else ''}, "
                     f"{pool['num_threads']} threads, {pool['filepath']}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastlstm`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    if args.command == "bench":
        from ._threads import usable_cores
        if args.threads is not None and args.threads > usable_cores():
            parser.error(f"--threads: expected at most the {usable_cores()} usable cores, "
                         f"got {args.threads}")
        if args.busy and args.dtype != "float32":
            parser.error(f"--busy: the busy section is float32; expected no --busy with "
                         f"--dtype {args.dtype}")
        return bench.main(quick=args.quick, threads=args.threads, out_dir=args.out,
                          frameworks=args.frameworks, modes=args.modes, busy=args.busy,
                          dtype=args.dtype, rounds=args.rounds)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
