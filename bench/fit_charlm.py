"""Seconds per epoch of a character-level language model fit: fastlstm against PyTorch.

Model: Embedding(V, 32) -> LSTM(128, every step) -> Dense(V, softmax), trained with sparse
categorical cross-entropy and Adam on 937 sequences of 64 tokens (V = 80), batch 32, one
epoch per ``fit`` call; PyTorch runs the same model (``nn.Embedding``, ``nn.LSTM`` with
``batch_first``, ``nn.Linear``, ``CrossEntropyLoss``, ``Adam``). Model, data and epoch are
``fastlstm._bench_worker``'s (its case ``CHARLM``, the fit epoch ``fastlstm bench`` reports).
Each configuration runs in a process of its own: one warm-up epoch, then ``--epochs`` timed
epochs.

Frameworks: ``fastlstm`` (its defaults: the OpenBLAS pools of NumPy and SciPy held to one
thread during ``fit``), ``fastlstm-numpy-blas`` (NumPy's pool left at its own thread count,
for comparison) and ``torch``. Threads: ``default`` (each framework's own) or a count, set
with ``fl.set_num_threads`` / ``torch.set_num_threads``.

Run ``python bench/fit_charlm.py [--threads default 1 2] [--epochs 3]``; it prints a
markdown table. ``time_fit`` does one configuration in the calling process.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

FRAMEWORKS = ("fastlstm", "fastlstm-numpy-blas", "torch")


def load_bench_worker():
    """``fastlstm._bench_worker`` loaded from its file without importing the fastlstm
    package, so that a PyTorch process holds PyTorch's thread pools alone."""
    package = importlib.util.find_spec("fastlstm")
    path = os.path.join(package.submodule_search_locations[0], "_bench_worker.py")
    spec = importlib.util.spec_from_file_location("_bench_worker", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def time_fit(framework, threads, epochs):
    """Seconds of each of ``epochs`` timed epochs, after one warm-up epoch.

    Parameters
    ----------
    framework : one of FRAMEWORKS
    threads : int or None
        Thread count of the framework; None keeps its default.
    epochs : int
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework: expected one of {FRAMEWORKS}, got {framework!r}")
    worker = load_bench_worker()
    if framework == "fastlstm-numpy-blas":
        _limit_only_scipy_blas()
    run_epoch = worker.build_call("torch" if framework == "torch" else "fastlstm",
                                  worker.CHARLM, threads)
    run_epoch()
    return [worker.time_calls(run_epoch, 1) for _ in range(epochs)]


def _limit_only_scipy_blas():
    """Make ``fit`` hold SciPy's OpenBLAS alone to one thread, leaving NumPy's pool as it is."""
    from fastlstm import _threads
    paths = _threads._bundled_openblas("scipy")
    scipy_pools = tuple(pool for pool in map(_threads._openblas_pool, paths) if pool is not None)
    _threads.blas_pools = lambda: scipy_pools


def _measure_in_subprocess(framework, threads, epochs):
    """time_fit in a fresh Python process (its thread pools untouched by the others)."""
    command = [sys.executable, __file__, "--worker", framework,
               "--threads", str(threads), "--epochs", str(epochs)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.splitlines()[-1])


def _thread_setting(text):
    """``default`` -> None, else a positive int."""
    if text == "default":
        return None
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected 'default' or a count >= 1, got {text}")
    return count


def _table(rows):
    """Markdown table of (framework, threads, seconds per epoch) rows."""
    lines = ["| framework | threads | median s/epoch | epochs (s) |", "|---|---|---|---|"]
    for framework, threads, seconds in rows:
        epochs = ", ".join(f"{s:.3f}" for s in seconds)
        lines.append(f"| {framework} | {threads or 'default'} | "
                     f"{statistics.median(seconds):.3f} | {epochs} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", type=_thread_setting, default=[None, 1, 2],
                        help="thread settings to run: 'default' or counts (default: default 1 2)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (default 3)")
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(time_fit(args.worker, args.threads[0], args.epochs)))
        return
    rows = [(framework, threads, _measure_in_subprocess(framework, threads or "default",
                                                        args.epochs))
            for framework in args.frameworks for threads in args.threads]
    print(_table(rows))


if __name__ == "__main__":
    main()
