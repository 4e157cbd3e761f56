"""pytest-benchmark suite: track fastlstm's speed over time.

Run ``pytest bench/ --benchmark-autosave`` after a change and ``pytest bench/
--benchmark-compare`` to see the difference (see bench/README.md). All frameworks share this
process, so the peers here are reference points only; the fair side-by-side figures come
from ``python -m fastlstm bench``, which gives each framework a process of its own.
Threads: ``FASTLSTM_BENCH_THREADS`` (default ``fastlstm.get_num_threads()``).
"""
import os

import pytest

import fastlstm
from fastlstm._bench_worker import BUILDERS, UNSUPPORTED, Case, make_data, make_params
from fastlstm.bench import S_SHAPES

THREADS = int(os.environ.get("FASTLSTM_BENCH_THREADS", fastlstm.get_num_threads()))
# framework -> the optional modules its builder needs
OPTIONAL = {"torch": ["torch"], "onnxruntime": ["onnxruntime", "onnx"]}

CASES = [Case(name, mode, *shape)
         for name, shape in S_SHAPES.items() for mode in ("forward", "train")]
CASES += [Case("S1", "stream", 1, 1, 32, 128),
          Case("S2-2layer", "forward", *S_SHAPES["S2"], num_layers=2),
          Case("S2-bidir", "train", *S_SHAPES["S2"], bidirectional=True)]


@pytest.mark.parametrize("framework", list(BUILDERS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name}-{c.mode}")
def test_lstm(benchmark, case, framework):
    if (framework, case.mode) in UNSUPPORTED:
        pytest.skip(f"{framework} has no {case.mode} mode")
    for module in OPTIONAL.get(framework, []):
        pytest.importorskip(module)
    params = make_params(case)
    x, grad_out = make_data(case)
    call = BUILDERS[framework](case, params, x, grad_out, THREADS)
    benchmark.group = f"{case.name} {case.mode} ({THREADS} threads)"
    benchmark.extra_info.update(flops=case.flops(), threads=THREADS)
    benchmark(call)
