"""Milliseconds per call of two or more fastlstm builds, alternated, on the benchmark shapes.

A shared machine's speed drifts by 10-30 % over tens of seconds, so an A/B of a kernel
change times the builds in turns (A B A B ...), each turn in a fresh process of its own,
and reports every turn's median: the ranges of the builds should not overlap. Each build
is a directory holding a built ``fastlstm`` package (a clone or a ``git worktree`` of the
commit, built with ``python setup.py build_ext --inplace``); ``.`` is this tree.

Run ``python bench/compare_builds.py /tmp/base . --cases S1 S3 --mode train --turns 3``;
``--threads 1`` times one thread. It prints a markdown table.
"""
import argparse
import json
import os
import subprocess
import sys

# (batch, steps, input_size, hidden_size), as in fastlstm bench
CASES = {"S1": (1, 128, 32, 128), "S2": (16, 64, 64, 256), "S3": (64, 100, 256, 512),
         "charlm": (32, 64, 32, 128), "DB3": (1, 100, 512, 512), "DB4": (64, 50, 512, 512),
         "DB5": (4, 50, 1024, 1024), "DB6": (32, 50, 1024, 1024)}

# Runs in the build's process: the median milliseconds of each case, as JSON.
TURN = """
import json, sys, time
import numpy as np
import fastlstm as fl
cases, mode, threads, seconds = json.loads(sys.argv[1])
if threads:
    fl.set_num_threads(threads)
medians = {}
for name, (B, T, n_in, H) in cases.items():
    m = fl.LSTM(n_in, H, dtype="float32", seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, n_in)).astype(np.float32)
    grad = np.ones((T, B, H), np.float32)
    if mode == "forward":
        m.eval()
        def call():
            m(x)
    else:
        m.train()
        def call():
            m(x)
            m.backward(grad)
            m.zero_grad()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    medians[name] = float(np.median(times)) * 1e3
print(json.dumps(medians))
"""


def turn(build, cases, mode, threads, seconds):
    """Median milliseconds per case of one turn of ``build`` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(build))
    spec = json.dumps([{name: CASES[name] for name in cases}, mode, threads, seconds])
    result = subprocess.run([sys.executable, "-c", TURN, spec], env=env, check=True,
                            capture_output=True, text=True, cwd=os.path.abspath(build))
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", help="directories with a built fastlstm")
    parser.add_argument("--cases", nargs="+", default=["S1", "S2", "S3"], choices=CASES)
    parser.add_argument("--mode", default="forward", choices=["forward", "train"])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per build (default: fastlstm's own)")
    parser.add_argument("--turns", type=int, default=3, help="turns per build")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per case")
    args = parser.parse_args(argv)
    if args.turns < 1 or args.seconds <= 0:
        parser.error(f"--turns and --seconds: expected >= 1 and > 0, got {args.turns} "
                     f"and {args.seconds}")
    rows = {build: [] for build in args.builds}
    for _ in range(args.turns):
        for build in args.builds:
            rows[build].append(turn(build, args.cases, args.mode, args.threads, args.seconds))
    print(f"| build | {' | '.join(f'{c} {args.mode} (ms)' for c in args.cases)} |")
    print(f"|---|{'---|' * len(args.cases)}")
    for build, turns in rows.items():
        cells = [", ".join(f"{t[c]:.3g}" for t in turns) for c in args.cases]
        print(f"| {build} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
