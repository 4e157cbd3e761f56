"""Measure one framework on one benchmark case, in a process of its own.

:mod:`fastlstm.bench` runs this file as a script with one JSON argument (the spec) once per
(framework, case), with ``OMP_NUM_THREADS`` and friends already set in the environment, so
the process imports only the framework it measures (``python -m fastlstm._bench_worker
'<spec>'`` also works, but imports the fastlstm package first). It builds the model, times
it and prints one line, :data:`RESULT_PREFIX` followed by the result as JSON. A framework
whose import fails is reported ``absent``; any other exception is reported as ``error``.
Each framework gets the same parameters (PyTorch layout, seeded), the same input and the
same thread count. The fastlstm process also times one float32 ``sgemm`` of the case's
forward FLOPs, the practical ceiling of the kernels.
"""
import gc
import json
import math
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Callable

import numpy as np

RESULT_PREFIX = "FASTLSTM-BENCH-RESULT "
FRAMEWORKS = ("fastlstm", "numpy", "torch", "onnxruntime")
MODES = ("forward", "train", "stream")
# ONNX Runtime (the inference package) has no backward pass.
UNSUPPORTED = {("onnxruntime", "train")}

Params = dict[str, np.ndarray]  # PyTorch's parameter names -> float32 arrays
Call = Callable[[], Any]        # one timed call


@dataclass(frozen=True)
class Case:
    """One benchmark shape in one mode; time-major input (seq_len, batch, input_size).

    ``stream`` is one step of a stateful B=1 stepper, so it needs batch = seq_len = 1 and
    one direction.
    """

    name: str
    mode: str
    batch: int
    seq_len: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        for field in ("batch", "seq_len", "input_size", "hidden_size", "num_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field}: expected an int >= 1, got {value!r}")
        stream_shape = (self.batch, self.seq_len, self.bidirectional)
        if self.mode == "stream" and stream_shape != (1, 1, False):
            raise ValueError("stream: expected batch=1, seq_len=1, bidirectional=False, got "
                             f"batch={self.batch}, seq_len={self.seq_len}, "
                             f"bidirectional={self.bidirectional}")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def layer_input_sizes(self) -> list[int]:
        """Input width of each layer: input_size, then D*H."""
        return [self.input_size] + [self.num_directions * self.hidden_size] * (self.num_layers - 1)

    def sgemm_shape(self) -> tuple[int, int, int]:
        """(M, N, K) with 2*M*N*K equal to the forward FLOPs: (T*B, 4H, sum over layers and
        directions of in + H)."""
        inner = self.num_directions * sum(n + self.hidden_size for n in self.layer_input_sizes())
        return self.seq_len * self.batch, 4 * self.hidden_size, inner

    def forward_flops(self) -> int:
        """2*T*B*4H*(in+H) per layer and direction; pointwise work ignored."""
        m, n, k = self.sgemm_shape()
        return 2 * m * n * k

    def flops(self) -> int:
        """FLOPs of one call in this mode (a training step counts as 3 forwards)."""
        return 3 * self.forward_flops() if self.mode == "train" else self.forward_flops()


@dataclass(frozen=True)
class Timing:
    """How long to warm up and measure one call.

    Each repeat times ``inner`` back-to-back calls (enough to last ``min_repeat_s``) and
    records their mean; the number of repeats fills ``budget_s`` within
    [min_repeats, max_repeats].
    """

    warmup_s: float = 0.1
    budget_s: float = 0.8
    min_repeats: int = 5
    max_repeats: int = 200
    min_repeat_s: float = 0.002


class Absent(Exception):
    """The framework (or a library it needs here) is not installed."""


def _import(name: str) -> ModuleType:
    """Import a framework module, turning an import failure into :class:`Absent`."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Absent(f"{name} not importable: {exc}") from exc


def make_params(case: Case, seed: int = 0) -> Params:
    """Parameters with PyTorch's names and init U(-1/sqrt(H), 1/sqrt(H)), float32."""
    rng = np.random.default_rng(seed)
    H = case.hidden_size
    bound = 1.0 / math.sqrt(H)
    params = {}
    for k, n_in in enumerate(case.layer_input_sizes()):
        for suffix in ("", "_reverse")[:case.num_directions]:
            for name, shape in (("weight_ih", (4 * H, n_in)), ("weight_hh", (4 * H, H)),
                                ("bias_ih", (4 * H,)), ("bias_hh", (4 * H,))):
                values = rng.uniform(-bound, bound, shape)
                params[f"{name}_l{k}{suffix}"] = values.astype(np.float32)
    return params


def make_data(case: Case, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(x, grad_out): x (T, B, in) and grad_out (T, B, D*H), standard normal float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.seq_len, case.batch, case.input_size)).astype(np.float32)
    grad_out = rng.standard_normal(
        (case.seq_len, case.batch, case.num_directions * case.hidden_size)).astype(np.float32)
    return x, grad_out


# Each builder returns a zero-argument callable doing one call of the case's mode and
# returning the forward output: out (T, B, D*H) for forward/train, h_t (1, H) for stream.

def build_fastlstm(case: Case, params: Params, x: np.ndarray, grad_out: np.ndarray,
                   threads: int) -> Call:
    fl = _import("fastlstm")
    fl.set_num_threads(threads)
    m = fl.LSTM(case.input_size, case.hidden_size, case.num_layers,
                bidirectional=case.bidirectional, dtype="float32", seed=0)
    m.load_state_dict(params)
    if case.mode == "stream":
        m.eval()
        stepper = m.stream(batch_size=1)
        x_t = x[0]
        return lambda: stepper.step(x_t)
    if case.mode == "forward":
        m.eval()
        return lambda: m(x)[0]

    m.train()

    def train_step() -> Any:
        out, _ = m(x)
        m.backward(grad_out)
        m.zero_grad()
        return out
    return train_step


def build_numpy(case: Case, params: Params, x: np.ndarray, grad_out: np.ndarray,
                threads: int) -> Call:
    from fastlstm import reference
    layers, bidirectional = case.num_layers, case.bidirectional
    if case.mode == "stream":
        shape = (layers, 1, case.hidden_size)
        h, c = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        x_t = x[:1]

        def step() -> Any:
            nonlocal h, c
            out, (h, c), _ = reference.forward(params, x_t, (h, c), num_layers=layers)
            return out[0]
        return step
    if case.mode == "forward":
        return lambda: reference.forward(params, x, num_layers=layers,
                                         bidirectional=bidirectional)[0]

    def train_step() -> Any:
        out, _, cache = reference.forward(params, x, num_layers=layers, bidirectional=bidirectional)
        reference.backward(cache, grad_out)
        return out
    return train_step


def build_torch(case: Case, params: Params, x: np.ndarray, grad_out: np.ndarray,
                threads: int) -> Call:
    torch = _import("torch")
    torch.set_num_threads(threads)
    if case.mode == "stream":
        cells = []
        for k, n_in in enumerate(case.layer_input_sizes()):
            cell = torch.nn.LSTMCell(n_in, case.hidden_size)
            cell.load_state_dict({name: torch.from_numpy(params[f"{name}_l{k}"])
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
            cells.append(cell)
        zeros = torch.zeros(1, case.hidden_size)
        state = [(zeros, zeros)] * case.num_layers
        x_t = torch.from_numpy(x[0])

        def step() -> Any:
            with torch.no_grad():
                h = x_t
                for k, cell in enumerate(cells):
                    state[k] = cell(h, state[k])
                    h = state[k][0]
            return h
        return step

    m = torch.nn.LSTM(case.input_size, case.hidden_size, case.num_layers,
                      bidirectional=case.bidirectional)
    m.load_state_dict({name: torch.from_numpy(value) for name, value in params.items()})
    if case.mode == "forward":
        m.eval()
        x_torch = torch.from_numpy(x)

        def forward() -> Any:
            with torch.inference_mode():
                return m(x_torch)[0]
        return forward

    m.train()
    x_torch = torch.from_numpy(x.copy()).requires_grad_(True)  # fastlstm returns dx too
    g = torch.from_numpy(grad_out)

    def train_step() -> Any:
        out, _ = m(x_torch)
        out.backward(g)
        m.zero_grad()
        x_torch.grad = None
        return out
    return train_step


def _ifgo_to_iofc(a: np.ndarray) -> np.ndarray:
    """Reorder the gate blocks along axis 0 from PyTorch's (i, f, g, o) to ONNX's (i, o, f, c)."""
    i, f, g, o = np.split(a, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def onnx_lstm_model(case: Case, params: Params, stateful: bool) -> Any:
    """An ONNX graph (opset 14, IR 8) with one LSTM node per layer.

    Input ``x`` (T, B, in); outputs ``out`` (T, B, D*H) and per layer ``h_l{k}``, ``c_l{k}``
    (D, B, H). ``stateful`` adds inputs ``h0_l{k}``, ``c0_l{k}`` (D, B, H) for the initial
    state. Between layers Y (T, D, B, H) becomes (T, B, D*H) by Transpose and Reshape.
    """
    onnx = _import("onnx")
    from onnx import TensorProto, helper, numpy_helper

    T, B, H, D = case.seq_len, case.batch, case.hidden_size, case.num_directions
    suffixes = ("", "_reverse")[:D]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, case.input_size])]
    outputs, nodes = [], []
    initializers = [numpy_helper.from_array(np.array([T, B, D * H], np.int64), "out_shape")]
    layer_input = "x"
    for k in range(case.num_layers):
        def stacked(name: str, k: int = k) -> np.ndarray:
            return np.stack([_ifgo_to_iofc(params[f"{name}_l{k}{s}"]) for s in suffixes])
        initializers += [
            numpy_helper.from_array(stacked("weight_ih"), f"W_l{k}"),
            numpy_helper.from_array(stacked("weight_hh"), f"R_l{k}"),
            numpy_helper.from_array(
                np.concatenate([stacked("bias_ih"), stacked("bias_hh")], axis=1), f"B_l{k}"),
        ]
        lstm_inputs = [layer_input, f"W_l{k}", f"R_l{k}", f"B_l{k}"]
        if stateful:
            lstm_inputs += ["", f"h0_l{k}", f"c0_l{k}"]
            inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [D, B, H])
                       for name in (f"h0_l{k}", f"c0_l{k}")]
        nodes.append(helper.make_node(
            "LSTM", lstm_inputs, [f"y_l{k}", f"h_l{k}", f"c_l{k}"], hidden_size=H,
            direction="bidirectional" if case.bidirectional else "forward"))
        layer_output = "out" if k == case.num_layers - 1 else f"x_l{k + 1}"
        nodes += [helper.make_node("Transpose", [f"y_l{k}"], [f"y_tbdh_l{k}"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"y_tbdh_l{k}", "out_shape"], [layer_output])]
        outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [D, B, H])
                    for name in (f"h_l{k}", f"c_l{k}")]
        layer_input = layer_output
    outputs.insert(0, helper.make_tensor_value_info("out", TensorProto.FLOAT, [T, B, D * H]))
    graph = helper.make_graph(nodes, "fastlstm_bench_lstm", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)],
                              producer_name="fastlstm-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_onnxruntime(case: Case, params: Params, x: np.ndarray, grad_out: np.ndarray,
                      threads: int) -> Call:
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    model = onnx_lstm_model(case, params, stateful=case.mode == "stream")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    if case.mode == "forward":
        return lambda: session.run(["out"], {"x": x})[0]

    state_in = [f"{s}0_l{k}" for k in range(case.num_layers) for s in "hc"]
    state_out = [f"{s}_l{k}" for k in range(case.num_layers) for s in "hc"]
    feeds = {"x": x[:1]}
    feeds.update({name: np.zeros((1, 1, case.hidden_size), np.float32) for name in state_in})

    def step() -> Any:
        feeds.update(zip(state_in, session.run(state_out, feeds)))
        return feeds[state_in[-2]][0]
    return step


BUILDERS = {"fastlstm": build_fastlstm, "numpy": build_numpy, "torch": build_torch,
            "onnxruntime": build_onnxruntime}


def measure(call: Call, timing: Timing) -> dict[str, Any]:
    """Warm up, then time repeats of ``call``; return seconds per call (median, quartiles,
    extremes) and the counts used. The garbage collector is off while timing, as in timeit."""
    start = time.perf_counter()
    call()
    last = time.perf_counter() - start
    warmup_calls = 1
    while time.perf_counter() - start < timing.warmup_s:
        t0 = time.perf_counter()
        call()
        last = time.perf_counter() - t0
        warmup_calls += 1
    inner = max(1, math.ceil(timing.min_repeat_s / max(last, 1e-9)))
    repeats = int(timing.budget_s / max(last * inner, 1e-9))
    repeats = min(max(repeats, timing.min_repeats), timing.max_repeats)
    times = np.empty(repeats)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                call()
            times[r] = (time.perf_counter() - t0) / inner
    finally:
        if gc_was_enabled:
            gc.enable()
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return dict(median_s=float(median), q1_s=float(q1), q3_s=float(q3), min_s=float(times.min()),
                max_s=float(times.max()), repeats=repeats, inner=inner, warmup_calls=warmup_calls)


def _blas_limit(threads: int) -> AbstractContextManager[Any]:
    """A threadpoolctl context limiting BLAS to ``threads`` (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def threadpools() -> list[dict[str, Any]] | None:
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded here, or None without it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return threadpool_info()


def measure_sgemm(case: Case, threads: int, timing: Timing) -> dict[str, Any]:
    """Time C = A @ B in float32 with (M, N, K) = ``case.sgemm_shape()`` through SciPy's BLAS
    (the library the kernels call), limited to ``threads``."""
    from scipy.linalg.blas import sgemm
    m, n, k = case.sgemm_shape()
    rng = np.random.default_rng(2)
    a = np.asfortranarray(rng.standard_normal((m, k), dtype=np.float32))
    b = np.asfortranarray(rng.standard_normal((k, n), dtype=np.float32))
    c = np.zeros((m, n), np.float32, order="F")
    steady = replace(timing, budget_s=timing.budget_s / 2)  # one gemm varies little
    with _blas_limit(threads):
        stats = measure(lambda: sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=True), steady)
    stats.update(shape=[m, n, k], flops=2 * m * n * k)
    return stats


def framework_version(framework: str) -> str | None:
    """``__version__`` of the framework's module if this process imported it, else None."""
    return getattr(sys.modules.get(framework), "__version__", None)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure ``spec["framework"]`` on ``spec["case"]``; return a JSON-able result dict."""
    framework, threads = spec["framework"], spec["threads"]
    case, timing = Case(**spec["case"]), Timing(**spec["timing"])
    result = dict(framework=framework, threads=threads, status="ok")
    try:
        if framework not in BUILDERS:
            raise ValueError(f"framework: expected one of {FRAMEWORKS}, got {framework!r}")
        if (framework, case.mode) in UNSUPPORTED:
            raise ValueError(f"{framework} does not support mode {case.mode!r}")
        if framework == "fastlstm":
            result["sgemm"] = measure_sgemm(case, threads, timing)
        params = make_params(case, spec.get("seed", 0))
        x, grad_out = make_data(case, spec.get("seed", 0) + 1)
        with _blas_limit(threads) if framework == "numpy" else nullcontext():
            call = BUILDERS[framework](case, params, x, grad_out, threads)
            result.update(measure(call, timing))
    except Absent as exc:
        result.update(status="absent", message=str(exc))
    except Exception as exc:  # a crashing peer is reported, the run goes on
        result.update(status="error", message=f"{type(exc).__name__}: {exc}")
    result["version"] = framework_version(framework)
    result["threadpools"] = threadpools()
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fastlstm._bench_worker '<json spec>'", file=sys.stderr)
        return 2
    print(RESULT_PREFIX + json.dumps(run(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
