"""Streaming inference latency: one time step at a time, as a sensor loop feeds a model.

A two-layer ``fl.LSTM`` (input 32, hidden 128) in eval mode; ``m.stream(batch_size=1)``
keeps the state (h, c) between calls, so each new sample costs one step. In practice the
weights come from ``fl.load`` (or ``fl.LSTM.from_torch``, ``from_onnx``, ``from_keras``);
here they are seeded. Each ``step`` is timed with ``time.perf_counter_ns``; the script
prints the median, 90th and 99th percentile and the worst step, next to what a stateless
model costs per new sample: re-running the last ``window`` samples with ``m(x)``. The
streamed outputs are checked against one whole-sequence call. No PyTorch needed.

Run: ``python examples/streaming_latency.py`` (a few seconds). Latency depends on the
machine and on what else runs on it; ``fastlstm info`` shows the build and the threads.
"""
import time

import numpy as np

import fastlstm as fl


def percentiles_us(nanoseconds):
    """Median, 90th, 99th percentile and maximum of ``nanoseconds``, in microseconds."""
    values = np.percentile(np.asarray(nanoseconds) / 1e3, [50, 90, 99, 100])
    return dict(zip(("median", "p90", "p99", "max"), (float(v) for v in values)))


def main(input_size=32, hidden_size=128, num_layers=2, steps=5000, window=128,
         window_calls=200, seed=0):
    """Stream ``steps`` samples, time each step and the window baseline; returns the figures."""
    m = fl.LSTM(input_size, hidden_size, num_layers=num_layers, seed=seed).eval()
    samples = np.random.default_rng(seed).standard_normal((steps, input_size), dtype=np.float32)

    stream = m.stream(batch_size=1)
    outputs = np.empty((steps, hidden_size), np.float32)
    step_ns = np.empty(steps, np.int64)
    for t, x_t in enumerate(samples):                  # x_t (input_size,), as a sensor gives it
        started = time.perf_counter_ns()
        h_t = stream.step(x_t)                         # (hidden_size,): the last layer's h_t
        step_ns[t] = time.perf_counter_ns() - started
        outputs[t] = h_t

    whole, _ = m(samples[:, None, :])                  # one call over the whole sequence
    difference = float(np.max(np.abs(whole[:, 0] - outputs)))

    window = min(window, steps)
    window_ns = np.empty(window_calls, np.int64)        # stateless: re-run the last `window`
    for call in range(window_calls):
        end = window + call % (steps - window + 1)
        started = time.perf_counter_ns()
        m(samples[end - window:end, None, :])
        window_ns[call] = time.perf_counter_ns() - started

    warm = min(10, steps // 2)                        # the first steps touch cold caches
    per_step, per_window = percentiles_us(step_ns[warm:]), percentiles_us(window_ns)
    print(f"LSTM({input_size}, {hidden_size}, num_layers={num_layers}), batch 1, "
          f"{fl.get_num_threads()} threads; {steps} streamed steps "
          f"(max |stream - whole sequence| {difference:.1e})")
    for name, figures in (("stream.step", per_step), (f"m(x), last {window} samples",
                                                      per_window)):
        print(f"  {name:<26} median {figures['median']:8.1f} µs, p90 {figures['p90']:8.1f}, "
              f"p99 {figures['p99']:8.1f}, max {figures['max']:8.1f} "
              f"({1e6 / figures['median']:,.0f} samples/s)")
    return {"step_us": per_step, "window_us": per_window, "max_difference": difference}


if __name__ == "__main__":
    main()
