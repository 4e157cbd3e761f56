"""Measure one framework on one benchmark case, in a process of its own.

:mod:`fastlstm.bench` runs this file as a script with one JSON argument (the spec) once per
(framework, case), with ``OMP_NUM_THREADS`` and friends already set in the environment, so
the process imports only the framework it measures (``python -m fastlstm._bench_worker
'<spec>' < /dev/null`` also works, but imports the fastlstm package first). It builds the
model, times it and prints one line, :data:`RESULT_PREFIX` followed by the result as JSON
(with every sample, so the runner can pool rounds); then it waits on standard input and
measures again, warm-up included, for every line it reads, until the input ends. A
framework whose import fails is reported ``absent``; any other exception is reported as
``error``.
Each framework gets the same parameters (PyTorch layout, seeded), the same input and the
same thread count, or, when the spec's ``threads`` is null, each framework's own default.
The fastlstm process also times one float32 ``sgemm`` of the case's forward FLOPs, the
practical ceiling of the kernels (not under competing load: spec ``busy`` > 0). Mode
``fit`` is one epoch of a character-level language model (Embedding -> LSTM -> Dense)
trained with ``Sequential.fit`` or its PyTorch twin. A case's ``dtype`` bfloat16 or int8
times reduced-precision inference: ``fl.quantize``; PyTorch's bfloat16 module
(``.to(torch.bfloat16)``, bfloat16 input) or its ``quantize_dynamic`` int8 LSTM; ONNX
Runtime's ``DynamicQuantizeLSTM`` from ``onnxruntime.quantization.quantize_dynamic``.
"""
import gc
import json
import math
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np

# After the sgemm yardstick OpenBLAS's idle threads spin for about 0.1 s (its thread
# timeout), taking a core from the calls timed next: wait this long first.
BLAS_SPIN_S = 0.3
RESULT_PREFIX = "FASTLSTM-BENCH-RESULT "
FRAMEWORKS = ("fastlstm", "numpy", "torch", "onnxruntime")
MODES = ("forward", "train", "stream", "fit")
DTYPES = ("float32", "bfloat16", "int8")
# ONNX Runtime (the inference package) has no backward pass; only fastlstm and PyTorch fit.
UNSUPPORTED = {("onnxruntime", "train"), ("onnxruntime", "fit"), ("numpy", "fit")}
# Reduced precision (inference only): NumPy's reference is float32, and ONNX Runtime's CPU
# provider has no bfloat16 LSTM.
UNSUPPORTED_DTYPES = {("numpy", "bfloat16"), ("numpy", "int8"), ("onnxruntime", "bfloat16")}


def unsupported(framework: str, case: "Case") -> str | None:
    """Why ``framework`` cannot run ``case`` (its mode or dtype), or None if it can."""
    if (framework, case.mode) in UNSUPPORTED:
        return f"{framework} has no {case.mode} mode"
    if (framework, case.dtype) in UNSUPPORTED_DTYPES:
        return f"{framework} has no {case.dtype} LSTM"
    return None

Params = dict[str, np.ndarray]  # PyTorch's parameter names -> float32 arrays
Call = Callable[[], Any]        # one timed call
Clock = Callable[[], float]     # seconds, as time.perf_counter


@dataclass(frozen=True)
class Case:
    """One benchmark shape in one mode; time-major input (seq_len, batch, input_size).

    ``stream`` is one step of a stateful B=1 stepper, so it needs batch = seq_len = 1 and
    one direction. ``fit`` is one epoch of ``Embedding(vocabulary_size, input_size) ->
    LSTM(hidden_size, return_sequences=True) -> Dense(vocabulary_size, softmax)`` over
    ``num_sequences`` token sequences of ``seq_len``, in minibatches of ``batch``; it needs
    one layer and one direction, and only it takes ``vocabulary_size`` and ``num_sequences``
    (0 in the other modes). ``dtype`` bfloat16 or int8 (inference: modes forward and stream)
    runs each framework's reduced-precision LSTM on the same float32 parameters.
    """

    name: str
    mode: str
    batch: int
    seq_len: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    vocabulary_size: int = 0
    num_sequences: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {self.dtype!r}")
        if self.dtype != "float32" and self.mode not in ("forward", "stream"):
            raise ValueError(f"dtype: {self.dtype} is inference only (modes forward and "
                             f"stream), got mode {self.mode!r}")
        fit_fields = ("vocabulary_size", "num_sequences")
        counts = ("batch", "seq_len", "input_size", "hidden_size", "num_layers")
        for field in counts + (fit_fields if self.mode == "fit" else ()):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field}: expected an int >= 1, got {value!r}")
        if self.mode != "fit" and (self.vocabulary_size, self.num_sequences) != (0, 0):
            raise ValueError(f"vocabulary_size, num_sequences: only mode 'fit' takes them, "
                             f"got mode {self.mode!r}")
        stream_shape = (self.batch, self.seq_len, self.bidirectional)
        if self.mode == "stream" and stream_shape != (1, 1, False):
            raise ValueError("stream: expected batch=1, seq_len=1, bidirectional=False, got "
                             f"batch={self.batch}, seq_len={self.seq_len}, "
                             f"bidirectional={self.bidirectional}")
        if self.mode == "fit" and (self.num_layers, self.bidirectional) != (1, False):
            raise ValueError("fit: expected num_layers=1, bidirectional=False, got "
                             f"num_layers={self.num_layers}, bidirectional={self.bidirectional}")

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

    def flops(self) -> int | None:
        """FLOPs of one call in this mode (a training step counts as 3 forwards); None for
        ``fit``, whose epoch is more than the LSTM."""
        if self.mode == "fit":
            return None
        return 3 * self.forward_flops() if self.mode == "train" else self.forward_flops()


@dataclass(frozen=True)
class Timing:
    """How long to warm up and measure one call.

    Warm-up repeats samples until the median of the last ``settle_window`` differs from the
    median of the ``settle_window`` before by less than ``settle_tolerance`` (relative),
    and at least ``warmup_min_s`` has passed; it stops at ``warmup_max_s`` settled or not.
    Each sample times ``inner`` back-to-back calls (enough to last ``min_repeat_s``) and
    records their mean. Measurement then takes as many samples as fill ``budget_s``, within
    [min_repeats, max_repeats].
    """

    warmup_min_s: float = 0.3
    warmup_max_s: float = 5.0
    settle_window: int = 3
    settle_tolerance: float = 0.03
    budget_s: float = 1.0
    min_repeats: int = 5
    max_repeats: int = 300
    min_repeat_s: float = 0.002


# One epoch of a char-LM: Embedding(80, 32) -> LSTM(128) -> Dense(80), 937 sequences of 64
# tokens, minibatches of 32 (bench/fit_charlm.py times it too).
CHARLM = Case("charlm", "fit", batch=32, seq_len=64, input_size=32, hidden_size=128,
              vocabulary_size=80, num_sequences=937)


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
                   threads: int | None) -> Call:
    fl = _import("fastlstm")
    if threads is not None:
        fl.set_num_threads(threads)
    m = fl.LSTM(case.input_size, case.hidden_size, case.num_layers,
                bidirectional=case.bidirectional, dtype="float32", seed=0)
    m.load_state_dict(params)
    if case.dtype != "float32":
        m = fl.quantize(m.eval(), case.dtype)
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
                threads: int | None) -> Call:
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
                threads: int | None) -> Call:
    torch = _import("torch")
    if threads is not None:
        torch.set_num_threads(threads)
    # bfloat16: the module and its input in bfloat16 (oneDNN's kernels); int8:
    # quantize_dynamic, which swaps the children of a container only
    dtype = torch.bfloat16 if case.dtype == "bfloat16" else torch.float32

    def reduced(module: Any) -> Any:
        if case.dtype == "int8":
            container = torch.ao.quantization.quantize_dynamic(
                torch.nn.ModuleList([module]), {type(module)}, dtype=torch.qint8)
            return container[0]
        return module.to(dtype)

    if case.mode == "stream":
        cells = []
        for k, n_in in enumerate(case.layer_input_sizes()):
            cell = torch.nn.LSTMCell(n_in, case.hidden_size)
            cell.load_state_dict({name: torch.from_numpy(params[f"{name}_l{k}"])
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
            cells.append(reduced(cell.eval()))
        zeros = torch.zeros(1, case.hidden_size, dtype=dtype)
        state = [(zeros, zeros)] * case.num_layers
        x_t = torch.from_numpy(x[0]).to(dtype)

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
        m = reduced(m.eval())
        x_torch = torch.from_numpy(x).to(dtype)

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


def onnx_quantized_lstm_model(model: Any) -> Any:
    """``model`` with its LSTM nodes replaced by ONNX Runtime's ``DynamicQuantizeLSTM``
    (int8 weights, u8 activations quantised per call), by ``quantize_dynamic``."""
    import os
    import tempfile

    onnx = _import("onnx")
    quantization = _import("onnxruntime.quantization")
    with tempfile.TemporaryDirectory() as folder:
        source, target = os.path.join(folder, "f32.onnx"), os.path.join(folder, "int8.onnx")
        onnx.save(model, source)
        quantization.quantize_dynamic(source, target, op_types_to_quantize=["LSTM"],
                                      weight_type=quantization.QuantType.QInt8)
        quantized = onnx.load(target)
    if not any(node.op_type == "DynamicQuantizeLSTM" for node in quantized.graph.node):
        raise RuntimeError("onnxruntime.quantization.quantize_dynamic left the LSTM in float32")
    return quantized


def build_onnxruntime(case: Case, params: Params, x: np.ndarray, grad_out: np.ndarray,
                      threads: int | None) -> Call:
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 0 if threads is None else threads  # 0: its default
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    model = onnx_lstm_model(case, params, stateful=case.mode == "stream")
    if case.dtype == "int8":
        model = onnx_quantized_lstm_model(model)
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


def make_tokens(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) for mode ``fit``: ``num_sequences`` rows of ``seq_len + 1`` uniform random
    tokens, split into inputs and next-token targets, both (num_sequences, seq_len) int64."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, case.vocabulary_size, (case.num_sequences, case.seq_len + 1))
    return tokens[:, :-1], tokens[:, 1:]


# Each fit builder returns a zero-argument callable training one epoch (minibatches of
# case.batch, reshuffled every epoch, Adam with lr 1e-3) and returning its mean loss.

def fit_fastlstm(case: Case, x: np.ndarray, y: np.ndarray, threads: int | None) -> Call:
    fl = _import("fastlstm")
    if threads is not None:
        fl.set_num_threads(threads)
    model = fl.Sequential([
        fl.layers.Embedding(case.vocabulary_size, case.input_size, input_shape=(case.seq_len,)),
        fl.layers.LSTM(case.hidden_size, return_sequences=True),
        fl.layers.Dense(case.vocabulary_size, activation="softmax"),
    ], seed=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    return lambda: model.fit(x, y, batch_size=case.batch, epochs=1,
                             verbose=0).history["loss"][0]


def fit_torch(case: Case, x: np.ndarray, y: np.ndarray, threads: int | None) -> Call:
    torch = _import("torch")
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(case.vocabulary_size, case.input_size)
    lstm = torch.nn.LSTM(case.input_size, case.hidden_size, batch_first=True)
    head = torch.nn.Linear(case.hidden_size, case.vocabulary_size)
    modules = torch.nn.ModuleList([embedding, lstm, head]).train()
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-3)
    cross_entropy = torch.nn.CrossEntropyLoss()  # softmax folded in, as fastlstm does
    x_torch, y_torch = torch.from_numpy(x), torch.from_numpy(y)

    def epoch() -> float:
        order = torch.randperm(len(x_torch))
        total = 0.0
        for start in range(0, len(order), case.batch):
            rows = order[start:start + case.batch]
            out, _ = lstm(embedding(x_torch[rows]))
            loss = cross_entropy(head(out).reshape(-1, case.vocabulary_size),
                                 y_torch[rows].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        return total / len(order)
    return epoch


FIT_BUILDERS = {"fastlstm": fit_fastlstm, "torch": fit_torch}


def time_calls(call: Call, inner: int, clock: Clock = time.perf_counter) -> float:
    """Seconds per call, the mean over ``inner`` back-to-back calls."""
    start = clock()
    for _ in range(inner):
        call()
    return (clock() - start) / inner


def is_settled(samples: Sequence[float], window: int, tolerance: float) -> bool:
    """Whether the median of the last ``window`` samples is within ``tolerance`` (relative)
    of the median of the ``window`` samples before them."""
    if len(samples) < 2 * window:
        return False
    last = float(np.median(samples[-window:]))
    before = float(np.median(samples[-2 * window:-window]))
    return abs(last - before) <= tolerance * before


def calls_per_sample(seconds_per_call: float, timing: Timing) -> int:
    """Back-to-back calls one sample needs to last ``timing.min_repeat_s``."""
    return max(1, math.ceil(timing.min_repeat_s / max(seconds_per_call, 1e-9)))


def warm_up(call: Call, timing: Timing, clock: Clock = time.perf_counter) -> dict[str, Any]:
    """Sample ``call`` until the timings settle (see :class:`Timing`).

    Returns the warm-up's duration ``warmup_s``, its number of calls ``warmup_calls``,
    whether it ``settled`` (False: it stopped at ``warmup_max_s``) and ``per_call_s``, the
    median of its last ``settle_window`` samples.
    """
    start = clock()
    samples: list[float] = []
    calls, inner = 0, 1
    while True:
        samples.append(time_calls(call, inner, clock))
        calls += inner
        elapsed = clock() - start
        settled = is_settled(samples, timing.settle_window, timing.settle_tolerance)
        if (settled and elapsed >= timing.warmup_min_s) or elapsed >= timing.warmup_max_s:
            break
        inner = calls_per_sample(samples[-1], timing)
    return dict(warmup_s=elapsed, warmup_calls=calls, settled=settled,
                per_call_s=float(np.median(samples[-timing.settle_window:])))


def measure(call: Call, timing: Timing, clock: Clock = time.perf_counter) -> dict[str, Any]:
    """Warm up until timings settle, then time samples of ``call`` for ``timing.budget_s``.

    Returns seconds per call (median, quartiles, extremes: :func:`summary`), every sample
    (``samples_s``, for pooling rounds), the counts used and the warm-up's figures (see
    :func:`warm_up`). The garbage collector is off while timing, as in timeit.
    """
    warm = warm_up(call, timing, clock)
    per_call = max(warm.pop("per_call_s"), 1e-9)
    inner = calls_per_sample(per_call, timing)
    repeats = int(timing.budget_s / (per_call * inner))
    repeats = min(max(repeats, timing.min_repeats), timing.max_repeats)
    times = np.empty(repeats)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            times[r] = time_calls(call, inner, clock)
    finally:
        if gc_was_enabled:
            gc.enable()
    return dict(summary(times), repeats=repeats, inner=inner, samples_s=times.tolist(), **warm)


def summary(samples: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Median, quartiles, extremes and mean of ``samples`` (seconds per call)."""
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return dict(median_s=float(median), q1_s=float(q1), q3_s=float(q3),
                min_s=float(np.min(samples)), max_s=float(np.max(samples)),
                mean_s=float(np.mean(samples)))


def _blas_limit(threads: int | None) -> AbstractContextManager[Any]:
    """A threadpoolctl context limiting BLAS to ``threads`` (a no-op for None or without
    threadpoolctl)."""
    if threads is None:
        return nullcontext()
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


def measure_sgemm(case: Case, threads: int | None, timing: Timing) -> dict[str, Any]:
    """Time C = A @ B in float32 with (M, N, K) = ``case.sgemm_shape()`` through SciPy's BLAS
    (the library the kernels call), limited to ``threads`` (None: BLAS's default)."""
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


def build_call(framework: str, case: Case, threads: int | None, seed: int = 0) -> Call:
    """The call to time: one epoch (mode ``fit``) or one LSTM call of ``framework``."""
    if case.mode == "fit":
        x, y = make_tokens(case, seed)
        return FIT_BUILDERS[framework](case, x, y, threads)
    params = make_params(case, seed)
    x, grad_out = make_data(case, seed + 1)
    return BUILDERS[framework](case, params, x, grad_out, threads)


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` size field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def call_memory_mib(call: Call) -> float | None:
    """Memory one call of ``call`` takes on top of what the process held before it: the
    peak resident set during the call minus the resident set before, in MiB. Covers
    whatever the framework allocates and keeps (workspaces, caches) as well as the call's
    temporaries. None where the peak cannot be reset (Linux ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")    # the peak resident set starts again from now
        before = _status_mib("VmRSS")
    except OSError:
        return None
    call()
    return max(0.0, _status_mib("VmHWM") - before)


def prepare(spec: dict[str, Any]) -> tuple[Call | None, dict[str, Any]]:
    """Build the call ``spec`` times; return it and the fields every round's result shares
    (framework, threads, status, version, thread pools; ``memory_mib`` of the first call,
    see :func:`call_memory_mib`, except under competing load; ``kernel_path`` of a
    reduced-precision fastlstm), or None and the result saying why it cannot be built
    (status ``absent`` or ``error``)."""
    framework, threads = spec["framework"], spec["threads"]
    case = Case(**spec["case"])
    base: dict[str, Any] = dict(framework=framework, threads=threads, status="ok")
    call = None
    try:
        if framework not in BUILDERS:
            raise ValueError(f"framework: expected one of {FRAMEWORKS}, got {framework!r}")
        reason = unsupported(framework, case)
        if reason:
            raise ValueError(reason)
        with _blas_limit(threads) if framework == "numpy" else nullcontext():
            call = build_call(framework, case, threads, spec.get("seed", 0))
            if not spec.get("busy"):
                base["memory_mib"] = call_memory_mib(call)
        if framework == "fastlstm" and case.dtype != "float32":
            base["kernel_path"] = _import("fastlstm.quantized").quantized_path(case.dtype)
    except Absent as exc:
        base.update(status="absent", message=str(exc))
    except Exception as exc:  # a crashing peer is reported, the run goes on
        base.update(status="error", message=f"{type(exc).__name__}: {exc}")
    base["version"] = framework_version(framework)
    base["threadpools"] = threadpools()
    return call, base


def measure_round(spec: dict[str, Any], call: Call, base: dict[str, Any]) -> dict[str, Any]:
    """One round of ``spec``: fastlstm's sgemm yardstick (not in mode ``fit`` nor under
    competing load), then ``call`` warmed up and timed; ``base`` plus the figures and the
    thread pools loaded by then."""
    framework, threads = spec["framework"], spec["threads"]
    case, timing = Case(**spec["case"]), Timing(**spec["timing"])
    result = dict(base)
    try:
        if framework == "fastlstm" and case.mode != "fit" and not spec.get("busy"):
            result["sgemm"] = measure_sgemm(case, threads, timing)
            time.sleep(BLAS_SPIN_S)
        with _blas_limit(threads) if framework == "numpy" else nullcontext():
            result.update(measure(call, timing))
    except Exception as exc:  # a crashing peer is reported, the run goes on
        result.update(status="error", message=f"{type(exc).__name__}: {exc}")
    result["threadpools"] = threadpools()
    return result


def main(argv: list[str] | None = None) -> int:
    """Measure the spec of ``argv`` once, then once more per line read from standard input,
    until it ends; print each result on its own line (with ``cpu_s``, the process's CPU
    seconds since the request: the first since the process started)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fastlstm._bench_worker '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    call, base = prepare(spec)
    requested = 0.0
    while True:
        result = base if call is None else measure_round(spec, call, base)
        cpu_s = time.process_time() - requested
        print(RESULT_PREFIX + json.dumps(dict(result, cpu_s=cpu_s)), flush=True)
        if not sys.stdin.readline():
            return 0
        requested = time.process_time()


if __name__ == "__main__":
    sys.exit(main())
