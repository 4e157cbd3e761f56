"""Property-based checks of the kernels (through fastlstm.LSTM) against fastlstm.reference.

Random shapes and options, every packed-product instruction set this CPU runs, 1 and 2
threads. Examples are bounded and derandomised so CI stays fast and repeatable; a longer
local run draws fresh ones: ``FASTLSTM_PROPERTY_EXAMPLES=20000 pytest
tests/kernels/test_kernel_properties.py`` (any count; random, not derandomised).
"""
import contextlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastlstm as fl
import fastlstm.lstm
from fastlstm import reference
from fastlstm._kernels import lstm as lstm_kernels

ISAS = lstm_kernels.supported_isas()
# B and H around the register blocks (8 rows on AVX-512, 6 on AVX2) and the 16-unit panels
BATCHES = [1, 2, 3, 6, 7, 8, 9, 13, 15, 16, 17]
HIDDEN = [1, 2, 5, 15, 16, 17, 31, 33, 48]
# max |kernel - reference| / max(1, max|reference|): forward, gradients
TOLERANCE = {"float32": (3e-5, 3e-4), "float64": (1e-10, 1e-9)}
CLIP_MARGIN = 1e-3      # float32 examples keep every clipped pre-activation this far from the edge

LONG_RUN = os.environ.get("FASTLSTM_PROPERTY_EXAMPLES")
PROPERTY_SETTINGS = settings(max_examples=int(LONG_RUN or 150), deadline=None,
                             derandomize=not LONG_RUN, database=None,
                             suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def engine(isa, threads):
    """Run the kernels on `isa` with `threads` threads, even for tiny sizes."""
    previous_threads, previous_min = fl.get_num_threads(), fastlstm.lstm._MIN_WORK_PER_THREAD
    lstm_kernels.set_packed_isa(isa)
    fl.set_num_threads(threads)
    fastlstm.lstm._MIN_WORK_PER_THREAD = 1
    try:
        yield
    finally:
        lstm_kernels.set_packed_isa(None)
        fl.set_num_threads(previous_threads)
        fastlstm.lstm._MIN_WORK_PER_THREAD = previous_min


@st.composite
def cases(draw):
    direction = draw(st.sampled_from(["forward", "bidirectional", "reverse"]))
    T = draw(st.integers(1, 6))
    B = draw(st.sampled_from(BATCHES))
    return dict(
        T=T, B=B, input_size=draw(st.integers(1, 20)), H=draw(st.sampled_from(HIDDEN)),
        num_layers=draw(st.integers(1, 2)), bidirectional=direction == "bidirectional",
        reverse=direction == "reverse", batch_first=draw(st.booleans()),
        peephole=draw(st.booleans()), bias=draw(st.booleans()),
        clip=draw(st.one_of(st.none(), st.floats(0.2, 3.0))),
        lengths=draw(st.one_of(st.none(), st.lists(st.integers(1, T), min_size=B, max_size=B))),
        with_hx=draw(st.booleans()), dtype=draw(st.sampled_from(["float32", "float64"])),
        isa=draw(st.sampled_from(ISAS)), threads=draw(st.sampled_from([1, 2])),
        seed=draw(st.integers(0, 2**16)))


def clip_margin(cache, clip):
    """The smallest distance of any pre-activation from +-clip in the reference run."""
    return min(float(np.min(np.abs(np.abs(layer["Z"]) - clip)))
               for directions in cache["layers"] for layer in directions)


@PROPERTY_SETTINGS
@given(case=cases())
def test_kernels_match_reference(case):
    dtype = case["dtype"]
    module = fl.LSTM(case["input_size"], case["H"], num_layers=case["num_layers"],
                     bias=case["bias"], batch_first=case["batch_first"],
                     bidirectional=case["bidirectional"], dtype=dtype, peephole=case["peephole"],
                     seed=case["seed"], reverse=case["reverse"], clip=case["clip"])
    D, L, T, B, H = module.num_directions, case["num_layers"], case["T"], case["B"], case["H"]
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((T, B, case["input_size"])).astype(dtype)
    hx = (tuple(rng.standard_normal((D * L, B, H)).astype(dtype) for _ in range(2))
          if case["with_hx"] else None)
    grad_out = rng.standard_normal((T, B, D * H)).astype(dtype)
    grad_h, grad_c = (rng.standard_normal((D * L, B, H)).astype(dtype) for _ in range(2))
    lengths = case["lengths"]

    # the reference in float64 on the same (rounded) parameters and inputs
    params = {k: v.astype(np.float64) for k, v in module.state_dict().items()}
    ref_out, (ref_h, ref_c), cache = reference.forward(
        params, x.astype(np.float64), None if hx is None else tuple(h.astype(np.float64) for h in hx),
        lengths, num_layers=L, bidirectional=case["bidirectional"], reverse=case["reverse"],
        clip=case["clip"], peephole=case["peephole"], bias=case["bias"])
    if case["clip"] is not None and dtype == "float32":
        # float32 rounding may put a pre-activation on the other side of the clip edge than
        # float64 does, flipping its zero-gradient mask: both results are right. Such
        # examples are left out, not covered by a looser tolerance.
        assume(clip_margin(cache, case["clip"]) > CLIP_MARGIN * case["clip"])
    ref_dx, (ref_dh0, ref_dc0), ref_grads = reference.backward(
        cache, grad_out.astype(np.float64), grad_h.astype(np.float64), grad_c.astype(np.float64))

    x_in, grad_in = x, grad_out
    if case["batch_first"]:
        x_in, grad_in = x.transpose(1, 0, 2), grad_out.transpose(1, 0, 2)
    with engine(case["isa"], case["threads"]):
        out, (h_n, c_n) = module(x_in, hx, lengths=lengths)
        dx, (dh0, dc0) = module.backward(grad_in, (grad_h, grad_c))
    if case["batch_first"]:
        out, dx = out.transpose(1, 0, 2), dx.transpose(1, 0, 2)

    forward_tol, grad_tol = TOLERANCE[dtype]
    for label, actual, expected, tol in [
            ("out", out, ref_out, forward_tol), ("h_n", h_n, ref_h, forward_tol),
            ("c_n", c_n, ref_c, forward_tol), ("dx", dx, ref_dx, grad_tol),
            ("dh0", dh0, ref_dh0, grad_tol), ("dc0", dc0, ref_dc0, grad_tol),
            *[(f"grad {k}", module.grads[k], g, grad_tol) for k, g in ref_grads.items()]]:
        assert actual.dtype == np.dtype(dtype), label
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
        error = float(np.max(np.abs(actual - expected), initial=0.0))
        assert error <= tol * scale, f"{label}: max abs diff {error:.3e} (case {case})"


@PROPERTY_SETTINGS
@given(case=cases())
def test_stream_equals_the_full_call(case):
    """Unidirectional eval-mode streams step by step to the full call's result, bit for bit."""
    assume(not case["bidirectional"] and not case["reverse"])
    dtype, T, B, H = case["dtype"], case["T"], case["B"], case["H"]
    module = fl.LSTM(case["input_size"], H, num_layers=case["num_layers"], bias=case["bias"],
                     dtype=dtype, peephole=case["peephole"], seed=case["seed"],
                     clip=case["clip"]).eval()
    x = np.random.default_rng(case["seed"]).standard_normal((T, B, case["input_size"]))
    x = x.astype(dtype)
    with engine(case["isa"], case["threads"]):
        out, (h_n, c_n) = module(x)
        stream = module.stream(batch_size=B)
        steps = np.stack([stream.step(x[t]) for t in range(T)])
    np.testing.assert_array_equal(steps, out)
    np.testing.assert_array_equal(stream.state[0], h_n)
    np.testing.assert_array_equal(stream.state[1], c_n)
