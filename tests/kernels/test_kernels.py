"""The Cython kernels (through fastlstm.LSTM) against their NumPy twin, fastlstm.reference."""
import itertools
import time

import numpy as np
import pytest
from conftest import assert_close

import contextlib

import fastlstm as fl
import fastlstm.lstm
from fastlstm import _threads, reference
from fastlstm._kernels import lstm as lstm_kernels
from fastlstm._kernels import openmp as _openmp

TOLERANCE = {"float32": (2e-5, 2e-4), "float64": (1e-9, 1e-9)}
CONFIGS = [
    dict(),
    dict(bias=False),
    dict(peephole=True),
    dict(reverse=True, peephole=True, clip=0.7),
    dict(num_layers=2, bidirectional=True, peephole=True, clip=1.5),
    dict(num_layers=3, dropout=0.3),
]
# (T, B, in, H); the last: several depth (T*B > 512) and column (H > 256) blocks of the
# weight-gradient products, with ragged edges
SIZES = [(6, 3, 5, 7), (1, 1, 1, 1), (5, 2, 4, 129), (4, 33, 17, 40), (9, 60, 20, 270),
         (3, 8, 6, 50)]


def run_both(config, size, dtype, lengths):
    T, B, input_size, H = size
    module = fl.LSTM(input_size, H, dtype=dtype, seed=0, **config)
    D, L = module.num_directions, module.num_layers
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, input_size)).astype(dtype)
    hx = tuple(rng.standard_normal((D * L, B, H)).astype(dtype) for _ in range(2))
    grad_out = rng.standard_normal((T, B, D * H)).astype(dtype)
    grad_h, grad_c = (rng.standard_normal((D * L, B, H)).astype(dtype) for _ in range(2))

    out, (h_n, c_n) = module(x, hx, lengths=lengths)
    dx, (dh0, dc0) = module.backward(grad_out, (grad_h, grad_c))
    backward_team = lstm_kernels.last_call()[0]
    masks = [record["mask"] for record in module_records(module, x, hx, lengths)][:-1]

    ref_out, (ref_h, ref_c), cache = reference.forward(
        module.state_dict(), x, hx, lengths, num_layers=L, bidirectional=module.bidirectional,
        reverse=module.reverse, clip=module.clip, peephole=module.peephole, bias=module.bias,
        dropout_masks=masks if module.dropout else None)
    ref_dx, (ref_dh0, ref_dc0), ref_grads = reference.backward(cache, grad_out, grad_h, grad_c)
    forward_tol, grad_tol = TOLERANCE[dtype]
    assert_close("out", out, ref_out, forward_tol)
    assert_close("h_n", h_n, ref_h, forward_tol)
    assert_close("c_n", c_n, ref_c, forward_tol)
    assert_close("dx", dx, ref_dx, grad_tol)
    assert_close("dh0", dh0, ref_dh0, grad_tol)
    assert_close("dc0", dc0, ref_dc0, grad_tol)
    for name, grad in ref_grads.items():
        assert_close(f"grad {name}", module.grads[name], grad, grad_tol)
    return backward_team


def module_records(module, x, hx, lengths):
    """Replay the dropout masks of the last call: same seed, same draws."""
    replay = fl.LSTM(**module.get_config())
    replay.load_state_dict(module.state_dict())
    replay._rng = np.random.default_rng(module.get_config()["seed"])
    replay._rng.uniform(size=sum(p.data.size for p in replay.parameters()))  # the init draws
    replay(x, hx, lengths=lengths)
    return replay._kept["layers"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_kernels_match_reference(config, size, dtype):
    run_both(config, size, dtype, None)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dx_rows_past_one_edge_block_match_reference(dtype):
    # T*B / 4 > 8192 rows per dx block with a ragged panel (in = 3): the edge goes in parts
    run_both({}, (260, 128, 3, 1), dtype, None)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_kernels_match_reference_with_lengths(config, dtype):
    run_both(config, (7, 4, 3, 20), dtype, [7, 1, 4, 6])


@contextlib.contextmanager
def no_min_work():
    """Let the module give 2 threads to any size (normally small steps get one)."""
    saved = fastlstm.lstm._MIN_WORK_PER_THREAD
    fastlstm.lstm._MIN_WORK_PER_THREAD = 1
    try:
        yield
    finally:
        fastlstm.lstm._MIN_WORK_PER_THREAD = saved


@pytest.mark.parametrize("size", [(5, 3, 4, 17), (4, 2, 3, 37), (3, 9, 5, 40)], ids=str)
def test_threads_split_hidden_units_unevenly(size):
    """Force 2 threads on small H: a thread owns a ragged block (H = 17: one unit)."""
    previous = fl.get_num_threads()
    adaptive = lstm_kernels.set_adaptive_threads(False)   # a fixed team, even on a busy machine
    try:
        fl.set_num_threads(2)
        with no_min_work():
            for dtype in ("float32", "float64"):
                team = run_both(dict(num_layers=2, bidirectional=True, peephole=True), size,
                                dtype, [size[0], 2, 1, 3, 1, 2, 3, 1, 2][:size[1]])
                if _threads.usable_cores() >= 2:
                    assert team == 2, "the backward ran on one thread"
    finally:
        fl.set_num_threads(previous)
        lstm_kernels.set_adaptive_threads(adaptive)


@pytest.mark.parametrize("peephole", [False, True])
def test_saturated_gates_match_float64_activations(peephole):
    """Pre-activations out to +-47: the float32 exp and tanh approximations, their clamps
    and the +-1 beyond |x| = 9, in the plain and the general cell loops, against float64."""
    module = fl.LSTM(7, 37, dtype="float32", seed=0, peephole=peephole)
    params = {name: value * 20 for name, value in module.state_dict().items()}
    module.load_state_dict(params)
    module.eval()
    x = np.random.default_rng(0).standard_normal((9, 5, 7)).astype(np.float32) * 3
    out, (h_n, c_n) = module(x)
    ref_out, (ref_h, ref_c), _ = reference.forward(
        {name: value.astype(np.float64) for name, value in params.items()}, x.astype(np.float64),
        peephole=peephole)
    first_step = x[0] @ params["weight_ih_l0"].T + params["bias_ih_l0"] + params["bias_hh_l0"]
    assert np.abs(first_step).max() > 30 and np.mean(np.abs(first_step) > 9) > 0.2
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=2e-5)
    np.testing.assert_allclose(c_n, ref_c, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- packed products
@pytest.mark.parametrize("isa", lstm_kernels.supported_isas())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 130, 33), (2, 70, 33), (3, 48, 19),
                                   (4, 100, 257), (5, 90, 21), (6, 70, 33), (7, 17, 5),
                                   (9, 64, 300), (12, 70, 20), (13, 50, 40), (17, 40, 129),
                                   (8, 32, 256), (9, 40, 1100), (3, 20, 2100), (64, 80, 24),
                                   (8, 80, 20), (7, 100, 33), (16, 70, 33), (14, 130, 300)],
                         ids=str)
def test_packed_product_matches_numpy(isa, dtype, shape):
    """Every register block (one block up to 8 rows on AVX-512, 6 on AVX2, two blocks up to
    twice that, past that blocks of at most 6 rows; four, three, two or one panels) and
    ragged edge of every instruction set this CPU runs, row blocks of near-even height (16
    rows as 8 + 8 and 13 as 7 + 6 on AVX-512, 13 as 5 + 5 + 3 on AVX2, 64 as 10 x 6 + 4),
    depths past one depth block (FL_KC = 1024). Read last panel first (as every other step
    of the recurrence reads them), the product gives the same bits."""
    M, N, K = shape
    rng = np.random.default_rng(0)
    A, W, C = (rng.standard_normal(s).astype(dtype) for s in ((M, K), (N, K), (M, N)))
    tol = 2e-5 if dtype == "float32" else 1e-12
    for accumulate in (False, True):
        result, backwards = C.copy(), C.copy()
        lstm_kernels.packed_product_twin(result, A, W, accumulate, isa)
        assert_close(f"{isa} accumulate={accumulate}", result, A @ W.T + (C if accumulate else 0),
                     tol)
        lstm_kernels.packed_product_twin(backwards, A, W, accumulate, isa, backwards=True)
        np.testing.assert_array_equal(backwards, result)


@pytest.mark.parametrize("isa", lstm_kernels.supported_isas())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (33, 64), (20, 70), (3, 130)], ids=str)
def test_weight_gradient_packing_is_exact(isa, dtype, shape):
    """The packing of dgates for the weight gradients, with db's column sums and the
    embedding table's row sums, gives the bits of adding the rows in order on every
    instruction set: whole blocks of 64 columns, a ragged last block, M below 8."""
    K, M = shape
    rng = np.random.default_rng(1)
    A = rng.standard_normal((K, M)).astype(dtype)
    sums0, table0 = rng.standard_normal(M).astype(dtype), rng.standard_normal((4, M)).astype(dtype)
    tokens = rng.integers(0, 4, K)
    expected_sums, expected_table = sums0.copy(), table0.copy()
    for k in range(K):
        expected_sums += A[k]
        expected_table[tokens[k]] += A[k]
    expected_out = np.zeros((-(-M // 8) * 8, K), dtype)
    expected_out[:M] = A.T
    expected_out = expected_out.reshape(-1, 8, K).transpose(0, 2, 1).ravel()
    out, sums, table = np.full(expected_out.size, np.nan, dtype), sums0.copy(), table0.copy()
    lstm_kernels.set_packed_isa(isa)
    try:
        lstm_kernels.pack_rows8_twin(out, sums, table, tokens, A)
    finally:
        lstm_kernels.set_packed_isa(None)
    assert np.array_equal(out, expected_out)
    assert np.array_equal(sums, expected_sums)
    assert np.array_equal(table, expected_table)


def test_weight_gradient_packing_checks_tokens():
    A = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"tokens: expected values in \[0, 4\), got 4"):
        lstm_kernels.pack_rows8_twin(np.zeros(16, np.float32), np.zeros(3, np.float32),
                                     np.zeros((4, 3), np.float32), np.array([0, 4]), A)


@pytest.mark.parametrize("isa", lstm_kernels.supported_isas())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 17, 5), (9, 40, 300), (70, 33, 129),
                                   (130, 64, 20), (13, 80, 30)], ids=str)
def test_transposed_product_matches_numpy(isa, dtype, shape):
    """The weight-gradient product (A transposed, packed in blocks of 8 rows) on every
    register block height, more rows than one row block (FL_MC = 64), ragged panels."""
    M, N, K = shape
    rng = np.random.default_rng(0)
    A_T, W, C = (rng.standard_normal(s).astype(dtype) for s in ((K, M), (N, K), (M, N)))
    tol = 2e-5 if dtype == "float32" else 1e-12
    lstm_kernels.set_packed_isa(isa)
    try:
        for accumulate in (False, True):
            result = C.copy()
            lstm_kernels.packed_product_at_twin(result, A_T, W, accumulate)
            assert_close(f"{isa} accumulate={accumulate}", result,
                         A_T.T @ W.T + (C if accumulate else 0), tol)
    finally:
        lstm_kernels.set_packed_isa(None)


@pytest.mark.parametrize("isa", lstm_kernels.supported_isas())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 17, 5), (16, 8, 64), (33, 20, 300),
                                   (70, 9, 129), (100, 40, 1100)], ids=str)
def test_rows_product_matches_numpy_and_the_packed_product(isa, dtype, shape):
    """The input projection with W read in its own rows (x's rows packed instead), on every
    register block height and ragged edge, one or two row panels at a time, depths past one
    depth block: close to NumPy and, element by element, the bits of the packed product."""
    M, N, K = shape
    rng = np.random.default_rng(0)
    A, W = (rng.standard_normal(s).astype(dtype) for s in ((M, K), (N, K)))
    packed, by_rows = np.zeros((M, N), dtype), np.full((M, N), np.nan, dtype)
    lstm_kernels.packed_product_twin(packed, A, W, False, isa)
    lstm_kernels.set_packed_isa(isa)
    try:
        lstm_kernels.rows_product_twin(by_rows, A, W)
    finally:
        lstm_kernels.set_packed_isa(None)
    assert_close(isa, by_rows, A @ W.T, 2e-5 if dtype == "float32" else 1e-12)
    np.testing.assert_array_equal(by_rows, packed)


@pytest.mark.parametrize("isa", lstm_kernels.supported_isas())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 16, 1), (1, 130, 33), (2, 70, 16), (3, 40, 20),
                                   (4, 64, 40), (5, 33, 19), (6, 70, 33), (8, 48, 64),
                                   (9, 17, 20), (16, 40, 300)],
                         ids=str)
def test_gates_product_sums_four_runs_as_one_product(isa, dtype, shape):
    """The backward's dh product over four runs of each row (a part's four gates): every
    register block height up to a block's rows (one pass: 8 on AVX-512, 6 on AVX2) and past
    it (four accumulated products), four, two or one panels at a time: close to NumPy, and
    the bits of one packed product over the four runs laid end to end, read in either order."""
    M, N, K = shape
    a_stride = K + 3
    rng = np.random.default_rng(0)
    A = rng.standard_normal((M, 4 * a_stride)).astype(dtype)
    W, C = rng.standard_normal((N, 4 * K)).astype(dtype), rng.standard_normal((M, N)).astype(dtype)
    runs = np.concatenate([A[:, g * a_stride:g * a_stride + K] for g in range(4)], axis=1)
    lstm_kernels.set_packed_isa(isa)
    try:
        for accumulate in (False, True):
            result, one_product = C.copy(), C.copy()
            lstm_kernels.gates_product_twin(result, A, W, a_stride, accumulate)
            lstm_kernels.packed_product_twin(one_product, runs, W, accumulate, isa)
            assert_close(f"{isa} accumulate={accumulate}", result,
                         runs @ W.T + (C if accumulate else 0),
                         2e-5 if dtype == "float32" else 1e-12)
            np.testing.assert_array_equal(result, one_product)
            backwards = C.copy()
            lstm_kernels.gates_product_twin(backwards, A, W, a_stride, accumulate, backwards=True)
            np.testing.assert_array_equal(backwards, one_product)
    finally:
        lstm_kernels.set_packed_isa(None)


def test_packed_product_rejects_an_unknown_isa():
    x = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="isa: expected one of"):
        lstm_kernels.packed_product_twin(x, x, x, False, "sse9")


# ---------------------------------------------------------------- products of other layers
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False),
                                              (True, True)])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (17, 1, 2), (300, 45, 129),
                                   (2048, 80, 128)], ids=str)
def test_matmul_matches_numpy_on_every_thread_count(dtype, trans_a, trans_b, shape):
    """c (+)= op(a) @ op(b): the large shapes are split in row blocks (ragged at 300) across
    threads, the small run on one; float32 within BLAS rounding, float64 to 1e-12."""
    m, n, k = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    product = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    lstm_kernels.set_adaptive_threads(False)    # a fixed team, whatever the machine does
    try:
        for threads in (1, 2, 3):
            for accumulate in (False, True):
                result = c.copy()
                lstm_kernels.matmul(result, a, b, trans_a, trans_b, accumulate, threads)
                assert_close(f"threads={threads} accumulate={accumulate}", result,
                             product + (c if accumulate else 0), tol)
    finally:
        lstm_kernels.set_adaptive_threads(True)


def test_matmul_with_no_depth_and_bad_shapes():
    c = np.ones((4, 3), np.float32)
    lstm_kernels.matmul(c, np.zeros((4, 0), np.float32), np.zeros((0, 3), np.float32),
                        False, False, True, 2)
    assert (c == 1).all()           # accumulate: c + 0
    lstm_kernels.matmul(c, np.zeros((4, 0), np.float32), np.zeros((0, 3), np.float32),
                        False, False, False, 2)
    assert (c == 0).all()
    with pytest.raises(ValueError, match=r"matmul: expected c \(m, n\), op\(a\) \(m, k\)"):
        lstm_kernels.matmul(c, np.zeros((4, 2), np.float32), np.zeros((3, 3), np.float32),
                            False, False, False, 1)
    with pytest.raises(ValueError, match="dtype mismatch"):    # one dtype for all three
        lstm_kernels.matmul(c, np.zeros((4, 2)), np.zeros((2, 3)), False, False, False, 1)


def _forward_arguments(T=2, B=3, n_in=4, H=5, dtype=np.float32, **changes):
    """prepare_forward's arguments for an eval-mode call, with `changes` by name."""
    z = lambda *shape: np.zeros(shape, dtype)    # noqa: E731
    args = dict(out=z(T, B, H), out_col=0, h_n=z(B, H), c_n=z(B, H), gates=z(0),
                hidden=z(0), cells=z(0), clipped=np.zeros(0, np.uint8),
                x=z(T * B, n_in), tokens=np.zeros(0, np.intp), h0=z(B, H), c0=z(B, H),
                W_ih=z(4 * H, n_in), W_hh=z(4 * H, H), b_ih=z(4 * H), b_hh=z(4 * H), peep=z(0),
                lengths=np.zeros(0, np.intp), reverse=False, training=False, clip=0.0)
    args.update(changes)
    return list(args.values())


@pytest.mark.parametrize("name, value, message", [
    ("h0", np.zeros((2, 5), np.float32), "prepare_forward: h0: expected 3, got 2"),
    ("W_hh", np.zeros((21, 5), np.float32), "prepare_forward: W_hh: expected 20, got 21"),
    ("b_ih", np.zeros(19, np.float32), "prepare_forward: b_ih: expected 20, got 19"),
    ("b_hh", np.zeros(0, np.float32), "prepare_forward: b_hh: expected 20, got 0"),
    ("hidden", np.zeros(30, np.float32), "prepare_forward: hidden: expected 0, got 30"),
    ("out_col", 1, "prepare_forward: out: expected True, got False"),
    ("peep", np.zeros(7, np.float32), "prepare_forward: peep: expected True, got False"),
])
def test_kernel_entry_names_the_argument_and_the_sizes(name, value, message):
    """The kernels' own checks (behind the modules' checks) say what they expected and got."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        lstm_kernels.prepare_forward(*_forward_arguments(**{name: value}))
    call = lstm_kernels.prepare_forward(*_forward_arguments())
    assert not lstm_kernels.run_forward([call], 1)


def _read_only(array):
    array.flags.writeable = False
    return array


@pytest.mark.parametrize("name, value, error, message", [
    ("h0", [[0.0] * 5] * 3, TypeError, "h0: expected a NumPy array, got list"),
    ("h0", np.zeros((3, 5)), TypeError, "h0: expected dtype float32, got float64"),
    ("W_hh", np.zeros((20, 5), np.int64), TypeError,
     "W_hh: expected a float32 or float64 NumPy array, got int64"),
    ("lengths", np.ones(3, np.int32), TypeError, "lengths: expected dtype int64, got int32"),
    ("out", np.zeros((6, 5), np.float32), ValueError, "out: expected 3 dimensions, got 2"),
    ("x", np.zeros((4, 6), np.float32)[:, ::1].T, ValueError,
     "x: expected a C-contiguous array"),
    ("h_n", _read_only(np.zeros((3, 5), np.float32)), ValueError,
     "h_n: expected a writable array"),
    ("h0", np.zeros((3, 5), ">f4"), ValueError,
     r"h0: expected an aligned array in native byte order, got >f4, aligned True"),
    ("h0", np.frombuffer(bytes(61), np.float32, 15, 1).reshape(3, 5), ValueError,
     r"h0: expected an aligned array in native byte order, got float32, aligned False"),
])
def test_kernel_entry_refuses_arrays_it_cannot_use(name, value, error, message):
    """Arrays the kernels would read or write wrongly through raw pointers: another type,
    dtype or rank, strided rows, or read-only outputs."""
    with pytest.raises(error, match=f"^prepare_forward: {message}$"):
        lstm_kernels.prepare_forward(*_forward_arguments(**{name: value}))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_entry_writes_a_strided_output(dtype):
    """out may be any view with a contiguous last axis (a batch-first array, transposed):
    the kernel writes through its strides, and into the columns from out_col."""
    T, B, n_in, H = 3, 2, 4, 5
    m = fl.LSTM(n_in, H, dtype=np.dtype(dtype).name, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((T, B, n_in)).astype(dtype)
    expected, _ = m(x)
    batch_first = np.full((B, T, H + 3), 7, dtype)
    args = _forward_arguments(T, B, n_in, H, dtype, out=batch_first.transpose(1, 0, 2),
                              out_col=2, x=x.reshape(T * B, n_in), W_ih=m.weight_ih_l0,
                              W_hh=m.weight_hh_l0, b_ih=m.bias_ih_l0, b_hh=m.bias_hh_l0)
    lstm_kernels.run_forward([lstm_kernels.prepare_forward(*args)], 2)
    assert np.array_equal(batch_first[:, :, 2:2 + H].transpose(1, 0, 2), expected)
    assert (batch_first[:, :, :2] == 7).all() and (batch_first[:, :, 2 + H:] == 7).all()


def test_backward_kernel_entry_names_the_argument_and_the_sizes():
    m = fl.LSTM(4, 5, seed=0)
    x = np.ones((2, 3, 4), np.float32)
    m(x)
    recorded = {}
    real = lstm_kernels.lstm_backward

    def record(*args):
        recorded["args"] = list(args)
        return real(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastlstm.lstm._lstm, "lstm_backward", record)
        m.backward(np.ones((2, 3, 5), np.float32))
    args = recorded["args"]
    args[6] = np.zeros((20, 4), np.float32)      # dW_hh (4H, H) with H = 5
    with pytest.raises(ValueError, match=r"^lstm_backward: dW_hh: expected 5, got 4$"):
        real(*args)


def test_calls_without_a_state_share_read_only_zeros():
    """Without hx every call starts from zeros; the module keeps them (read-only, a few
    shapes) instead of making them per call, and results equal explicit zero states."""
    m = fl.LSTM(4, 6, num_layers=2, seed=0)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 1, 5):
        x = rng.standard_normal((3, batch, 4)).astype(np.float32)
        zeros = np.zeros((2, batch, 6), np.float32)
        out, (h_n, c_n) = m(x)
        m.backward(np.ones_like(out))
        expected, (h_e, c_e) = m(x, (zeros, zeros))
        m.backward(np.ones_like(out))
        assert np.array_equal(out, expected) and np.array_equal(h_n, h_e)
        assert np.array_equal(c_n, c_e)
    kept = list(fastlstm.lstm._ZERO_STATES.values())
    assert kept and all(not z.flags.writeable and not z.any() for z in kept)
    for batch in range(1, 3 * fastlstm.lstm._ZERO_STATES_KEPT):
        m.eval()(np.zeros((1, batch, 4), np.float32))
    assert len(fastlstm.lstm._ZERO_STATES) <= fastlstm.lstm._ZERO_STATES_KEPT
    large = fastlstm.lstm._ZERO_STATE_MAX_BYTES // (2 * 6 * 4) + 1    # batch past 64 KB
    m.eval()(np.zeros((1, large, 4), np.float32))
    assert all(z.nbytes <= fastlstm.lstm._ZERO_STATE_MAX_BYTES
               for z in fastlstm.lstm._ZERO_STATES.values())


# ---------------------------------------------------------------- workspace pool
def test_workspaces_are_kept_for_the_next_call_and_released_on_request():
    lstm_kernels.release_workspaces()
    assert lstm_kernels.pooled_workspace_bytes() == 0
    module = fl.LSTM(8, 40, dtype="float32", seed=0).eval()
    x = np.random.default_rng(0).standard_normal((5, 3, 8)).astype(np.float32)
    previous = fl.get_num_threads()
    try:
        fl.set_num_threads(1)   # one slice, so both calls need the same block
        first, _ = module(x)
        kept = lstm_kernels.pooled_workspace_bytes()
        # the panels of W_ih and W_hh, 4 gates of 48 padded units, (8 + 40) deep
        assert kept >= 4 * 48 * (8 + 40) * 4
        again, _ = module(x)
    finally:
        fl.set_num_threads(previous)
    assert lstm_kernels.pooled_workspace_bytes() == kept, "the second call took a new block"
    np.testing.assert_array_equal(again, first)
    assert lstm_kernels.release_workspaces() == kept
    assert lstm_kernels.pooled_workspace_bytes() == 0


def test_reused_workspaces_of_other_sizes_give_the_reference_results():
    """Big, small, then big again; the directions of a layer take a block each."""
    lstm_kernels.release_workspaces()
    for size in [(4, 3, 9, 70), (2, 1, 3, 5), (4, 3, 9, 70), (3, 5, 6, 33)]:
        for dtype in ("float32", "float64"):
            run_both(dict(num_layers=2, bidirectional=True), size, dtype, None)
    assert 0 < lstm_kernels.pooled_workspace_bytes()


def test_calls_from_several_python_threads_take_separate_workspaces():
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(0)
    modules = [fl.LSTM(16, H, dtype="float32", seed=H).eval() for H in (24, 64, 130)]
    inputs = [rng.standard_normal((20, 4, 16)).astype(np.float32) for _ in modules]
    expected = [m(x)[0] for m, x in zip(modules, inputs)]

    def run(i):
        return [modules[i](inputs[i])[0] for _ in range(30)]

    with ThreadPoolExecutor(3) as pool:
        for i, outputs in enumerate(pool.map(run, range(3))):
            for out in outputs:
                np.testing.assert_array_equal(out, expected[i])


# ---------------------------------------------------------------- a member loses its core

@pytest.mark.parametrize("num_layers", [1, 3])
def test_a_small_stream_forced_to_split_gives_the_same_steps(num_layers):
    """set_stream_split_bytes(0) splits every stream made after it: H = 17 (a ragged panel)
    and layers of different input sizes give the steps of the unsplit stream bit for bit."""
    m = fl.LSTM(5, 17, num_layers=num_layers, seed=0).eval()
    x = np.random.default_rng(1).standard_normal((4, 2, 5)).astype(np.float32)
    previous, adaptive = fl.get_num_threads(), lstm_kernels.set_adaptive_threads(False)
    steps = {}
    try:
        fl.set_num_threads(2)
        for size in (1 << 62, 0):
            split = lstm_kernels.set_stream_split_bytes(size)
            try:
                s = m.stream(2)
            finally:
                lstm_kernels.set_stream_split_bytes(split)
            steps[size] = [s.step(x[t]) for t in range(4)] + list(s.state)
    finally:
        fl.set_num_threads(previous)
        lstm_kernels.set_adaptive_threads(adaptive)
    for whole, split in zip(steps[1 << 62], steps[0]):
        np.testing.assert_array_equal(split, whole)


@pytest.mark.parametrize("one_thread_ns, split_ns, kept", [(1000, 800, 1), (800, 1000, 0)])
def test_the_stream_chooser_keeps_the_faster_way_and_checks_it_less_often(one_thread_ns,
                                                                          split_ns, kept):
    """16 steps split, 16 on one thread, then the faster way for 256 steps; each later
    comparison (16 steps of the other way, 16 of the kept one) doubles the time kept."""
    ways = lstm_kernels.simulate_chooser(one_thread_ns, split_ns, 5000)
    runs = [(way, len(list(run))) for way, run in itertools.groupby(ways)]
    other = 1 - kept
    expected_start = [(1, 16), (0, 16 + 256)] if kept == 0 else [(1, 16), (0, 16), (1, 256)]
    assert runs[:len(expected_start)] == expected_start
    trials = [length for way, length in runs if way == other]
    assert set(trials[1:]) == {16}
    kept_runs = [length for way, length in runs[len(expected_start):-1] if way == kept]
    assert kept_runs == [16 + 256 * 2 ** (i + 1) for i in range(len(kept_runs))]


def test_on_a_busy_machine_the_stream_chooser_keeps_to_one_thread():
    """Past the first comparison (which the split wins here), a machine with more runnable
    threads than cores keeps the stream on one thread, with no more split trials."""
    ways = lstm_kernels.simulate_chooser(1000, 800, 5000, busy=True)
    runs = [(way, len(list(run))) for way, run in itertools.groupby(ways)]
    assert runs[:3] == [(1, 16), (0, 16), (1, 256)]
    assert runs[3:] == [(0, 5000 - 288)]


def test_a_stream_that_may_split_gives_the_same_steps_either_way():
    """With the chooser on, a stream past the split size runs its first steps split and
    then on one thread (its first comparison; a step that the backoff after a slow one runs
    on one thread does not count): every step equals the one-thread stream's, bit for bit."""
    if _threads.usable_cores() < 2:
        pytest.skip("needs 2 cores")
    m = fl.LSTM(24, 144, seed=0).eval()    # 0.4 MB of weights, H not a multiple of 16
    x = np.random.default_rng(2).standard_normal((40, 2, 24)).astype(np.float32)
    previous = fl.get_num_threads()
    adaptive = lstm_kernels.set_adaptive_threads(True)
    split_size = lstm_kernels.set_stream_split_bytes(1 << 18)
    planned = []
    try:
        fl.set_num_threads(1)
        alone = m.stream(2)
        fl.set_num_threads(2)
        chosen = m.stream(2)
        while len(planned) < 40 or (False not in planned and len(planned) < 100_000):
            x_t = x[len(planned) % 40]
            planned.append(chosen.split_next)
            got = chosen.step(x_t)
            fl.set_num_threads(1)
            np.testing.assert_array_equal(got, alone.step(x_t))
            fl.set_num_threads(2)
    finally:
        lstm_kernels.set_stream_split_bytes(split_size)
        lstm_kernels.set_adaptive_threads(adaptive)
        fl.set_num_threads(previous)
    assert planned[:16] == [True] * 16 and False in planned


def test_set_stream_split_bytes_refuses_a_negative_size():
    with pytest.raises(ValueError, match="size: expected bytes >= 0, got -1"):
        lstm_kernels.set_stream_split_bytes(-1)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_a_split_stream_step_with_a_late_thread_backs_off_to_one_thread(num_layers):
    """A stream step split across the cores waits for a late thread (a one-layer step has no
    barrier to notice it at) and then counts as stalled: the next calls use one thread,
    and the steps give the same results as on time."""
    if fl.get_num_threads() < 2 and _threads.usable_cores() < 2:
        pytest.skip("needs 2 cores")
    m = fl.LSTM(64, 300, num_layers=num_layers, seed=0).eval()   # weights past 512 KB: split
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    previous = fl.get_num_threads()
    results = {}
    try:
        fl.set_num_threads(2)
        for late in (-1, 0):
            lstm_kernels.set_adaptive_threads(True)    # clears any backoff
            lstm_kernels.inject_late_thread(late, 5000)
            s = m.stream()
            results[late] = [s.step(x[t]) for t in range(3)]
        assert lstm_kernels.team_size(2) == 1   # backing off after the stalled steps
    finally:
        lstm_kernels.inject_late_thread(-1, 0)
        lstm_kernels.set_adaptive_threads(True)
        fl.set_num_threads(previous)
    for normal, late in zip(results[-1], results[0]):
        np.testing.assert_array_equal(late, normal)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [4, 32])
@pytest.mark.parametrize("late_step", [0, 3, 10, 11])
def test_late_thread_hands_the_call_to_thread_0_with_the_same_result(dtype, batch, late_step):
    """Thread 1 sleeps 20 ms at one step, as if other load took its core: thread 0 finishes
    the call alone with bit-identical results, and the next calls back off to one thread.
    At batch 4 the threads split the hidden units (the forward and the backward run as
    pipelines; the forward's member 0 never waits for member 1's last step, 11), at batch 32
    the sequences: the team lags, thread 0 runs up to 4 steps ahead before it waits (the
    sleep outlasts them in every build, the sanitized portable one included) and then takes
    over thread 1's."""
    if fl.get_num_threads() < 2 and _threads.usable_cores() < 2:
        pytest.skip("needs 2 cores")
    m = fl.LSTM(8, 64, dtype=dtype, seed=0)
    x = np.random.default_rng(1).standard_normal((12, batch, 8)).astype(dtype)
    g = np.random.default_rng(2).standard_normal((12, batch, 64)).astype(dtype)
    previous = fl.get_num_threads()
    results = {}
    try:
        fl.set_num_threads(2)
        with no_min_work():
            for late in (-1, late_step):
                lstm_kernels.set_adaptive_threads(True)    # clears any backoff
                lstm_kernels.inject_late_thread(late, 20000)
                m.zero_grad()
                out, (h_n, c_n) = m(x)
                threads, stalled = lstm_kernels.last_call()
                assert threads == 2 and (stalled or late < 0)
                lstm_kernels.set_adaptive_threads(True)
                dx, (dh0, dc0) = m.backward(g)
                threads, stalled = lstm_kernels.last_call()
                assert threads == 2 and (stalled or late < 0)
                results[late] = [out, h_n, c_n, dx, dh0, dc0, *(m.grads[k].copy() for k in sorted(m.grads))]
            assert lstm_kernels.team_size(2) == 1   # backing off after the stalled call
        lstm_kernels.set_adaptive_threads(True)
        assert lstm_kernels.team_size(2) == 2
    finally:
        lstm_kernels.inject_late_thread(-1, 0)
        fl.set_num_threads(previous)
    for normal, late in zip(results[-1], results[late_step]):
        np.testing.assert_array_equal(late, normal)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hidden", [400, 512])
def test_a_sharing_team_takes_the_slices_of_a_late_thread(dtype, hidden):
    """A forward past SHARE_MIN_BYTES of packed weights a thread, over 16 sequences, cuts its
    units into slices the threads claim step by step (H 400: six slices of 80 units, the
    last one empty). Thread 1 sleeps at the start of one step (stall handling off, so the
    team stays whole): thread 0 takes its slices, and the outputs keep the bits of one
    thread and match the reference."""
    if fl.get_num_threads() < 2 and _threads.usable_cores() < 2:
        pytest.skip("needs 2 cores")
    m = fl.LSTM(24, hidden, dtype=dtype, seed=0)
    x = np.random.default_rng(1).standard_normal((6, 16, 24)).astype(dtype)
    previous = fl.get_num_threads()
    results = {}
    try:
        for threads, late in ((1, -1), (2, -1), (2, 2)):
            fl.set_num_threads(threads)
            lstm_kernels.set_adaptive_threads(False)
            lstm_kernels.inject_late_thread(late, 20000)
            before = lstm_kernels.stolen_slices()
            for mode in ("eval", "train"):
                getattr(m, mode)()
                out, (h_n, c_n) = m(x)
                assert lstm_kernels.last_call()[0] == threads
                results[threads, late, mode] = [out, h_n, c_n]
            if late >= 0:   # thread 0 took all of thread 1's slices at that step, both calls
                assert lstm_kernels.stolen_slices() - before >= 2 * 2
    finally:
        lstm_kernels.inject_late_thread(-1, 0)
        lstm_kernels.set_adaptive_threads(True)
        fl.set_num_threads(previous)
    params = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    ref_out, _, _ = reference.forward(params, x.astype(np.float64))
    for key, arrays in results.items():
        assert_close(str(key), arrays[0], ref_out, 2e-5 if dtype == "float32" else 1e-12)
        for got, alone in zip(arrays, results[1, -1, key[2]]):
            np.testing.assert_array_equal(got, alone)


def test_every_kernel_module_shares_the_one_stall_handling():
    """A stall seen by one kernel (the LSTM's, the loss's, the optimizer's) sends them all
    to one thread: each module points at the openmp module's state."""
    from fastlstm._kernels import layers, quant, update
    address = _openmp.shared_state_address()
    for module in (lstm_kernels, layers, quant, update):
        assert module.shared_state_address() == address, module.__name__


def test_a_backoff_ends_with_a_probe_only_when_the_cores_are_free():
    """After a stalled call the calls of the next 20 ms get one thread. When the period is
    over and the machine still has more runnable threads than cores, the period starts
    over without a probe (a probe would only stall again); once the cores are free, the
    next call gets the full team."""
    if fl.get_num_threads() < 2 and _threads.usable_cores() < 2:
        pytest.skip("needs 2 cores")
    m = fl.LSTM(8, 64, seed=0)
    x = np.random.default_rng(1).standard_normal((12, 4, 8)).astype(np.float32)
    previous = fl.get_num_threads()
    try:
        fl.set_num_threads(2)
        with no_min_work():
            lstm_kernels.set_adaptive_threads(True)    # clears any backoff
            lstm_kernels.inject_late_thread(3, 20000)
            m(x)
            assert lstm_kernels.last_call() == (2, True)
        lstm_kernels.inject_late_thread(-1, 0)
        lstm_kernels.set_machine_busy(True)
        assert lstm_kernels.team_size(2) == 1     # within the period
        for _ in range(3):
            time.sleep(0.03)                      # past the period, on a busy machine
            assert lstm_kernels.team_size(2) == 1
        lstm_kernels.set_machine_busy(False)
        assert lstm_kernels.team_size(2) == 1     # the period started over at the last call
        time.sleep(0.03)
        assert lstm_kernels.team_size(2) == 2     # the probe
    finally:
        lstm_kernels.inject_late_thread(-1, 0)
        lstm_kernels.set_machine_busy(None)
        lstm_kernels.set_adaptive_threads(True)
        fl.set_num_threads(previous)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("late_step", [-1, 0, 6, 15])
def test_a_lagging_team_of_four_gives_the_bits_of_one_thread(dtype, late_step):
    """Four threads (two per core here, so members also lose their cores for real) split
    32 sequences and lag instead of meeting after every step; with thread 1 late at one
    step or not, member 0 runs what the others left, and forward, backward and every
    gradient equal those of one thread bit for bit."""
    m = fl.LSTM(8, 64, dtype=dtype, seed=0)
    x = np.random.default_rng(1).standard_normal((16, 32, 8)).astype(dtype)
    g = np.random.default_rng(2).standard_normal((16, 32, 64)).astype(dtype)
    requested, cores = _openmp.requested_threads(), _threads.usable_cores()
    results = {}
    try:
        with no_min_work():
            for threads in (1, 4):
                _openmp.set_threads(threads, max(threads, cores))
                lstm_kernels.set_adaptive_threads(True)
                lstm_kernels.inject_late_thread(late_step if threads == 4 else -1, 20000)
                m.zero_grad()
                out, (h_n, c_n) = m(x)
                team, stalled = lstm_kernels.last_call()
                assert team == threads and (stalled or threads == 1 or late_step < 0)
                lstm_kernels.set_adaptive_threads(True)
                dx, (dh0, dc0) = m.backward(g)
                team, stalled = lstm_kernels.last_call()
                assert team == threads and (stalled or threads == 1 or late_step < 0)
                results[threads] = [out, h_n, c_n, dx, dh0, dc0,
                                    *(m.grads[k].copy() for k in sorted(m.grads))]
    finally:
        lstm_kernels.inject_late_thread(-1, 0)
        lstm_kernels.set_adaptive_threads(True)
        _openmp.set_threads(requested, cores)
    for one, four in zip(results[1], results[4]):
        np.testing.assert_array_equal(four, one)
