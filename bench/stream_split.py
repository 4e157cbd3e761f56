"""Microseconds per stream step on one thread and split across the threads, per size.

A stream step (``m.stream(1).step``) reads all of its weights; past a size, splitting the
hidden units across the cores pays for starting a parallel region each step, or does not:
it depends on the size and on how far apart the host puts the cores. A fastlstm stream
whose weights pass 256 KB (``fastlstm._kernels.lstm.set_stream_split_bytes``) times both
ways and keeps the faster; this script measures each way on its own (the choice turned
off) at each size, alternating them, so the size can be checked on a machine:
``python bench/stream_split.py [--threads 2] [--rounds 2]``. It prints a markdown table.
"""
import argparse
import statistics
import time

import numpy as np

import fastlstm as fl
from fastlstm._kernels import lstm as kernels

# (input_size, hidden_size, num_layers): float32 weights from 80 KB to 1.3 MB
SIZES = [(32, 64, 1), (32, 96, 1), (32, 128, 1), (32, 160, 1), (32, 128, 2), (64, 192, 1),
         (32, 256, 1)]
STEPS = 20000


def step_us(stream, x, steps=STEPS, repeats=7):
    """Median over ``repeats`` of the mean microseconds per step over ``steps`` steps."""
    for _ in range(steps // 4):
        stream.step(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            stream.step(x)
        times.append((time.perf_counter() - start) / steps * 1e6)
    return statistics.median(times)


def measure(input_size, hidden_size, num_layers, threads, split):
    """Microseconds per step of a fresh stream, split across ``threads`` or on one thread."""
    m = fl.LSTM(input_size, hidden_size, num_layers, seed=0).eval()
    previous_threads = fl.get_num_threads()
    previous_split = kernels.set_stream_split_bytes(0 if split else 1 << 62)
    adaptive = kernels.set_adaptive_threads(False)     # no choosing: this way every step
    try:
        fl.set_num_threads(threads if split else 1)
        stream = m.stream(1)
        return step_us(stream, np.ones(input_size, np.float32))
    finally:
        kernels.set_adaptive_threads(adaptive)
        kernels.set_stream_split_bytes(previous_split)
        fl.set_num_threads(previous_threads)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads of a split step")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of both ways")
    args = parser.parse_args()
    print(f"| in / H / layers | weights | 1 thread (us) | split on {args.threads} (us) |")
    print("|---|---|---|---|")
    for input_size, hidden_size, num_layers in SIZES:
        weights = 4 * hidden_size * (input_size + hidden_size
                                     + (num_layers - 1) * 2 * hidden_size) * 4
        one, split = [], []
        for _ in range(args.rounds):
            one.append(measure(input_size, hidden_size, num_layers, args.threads, False))
            split.append(measure(input_size, hidden_size, num_layers, args.threads, True))
        print(f"| {input_size} / {hidden_size} / {num_layers} | {weights // 1024} KB | "
              f"{' '.join(f'{t:.2f}' for t in one)} | {' '.join(f'{t:.2f}' for t in split)} |")


if __name__ == "__main__":
    main()
