"""Determinism, concurrency, lifetime and size limits of the kernels (through fastlstm.LSTM).

Results are bit-identical for any thread count, across repeated calls and between eval-mode
and train-mode forwards on one instruction set: every output element and every gradient is
summed in the same order whichever thread computes it (hidden-unit slices come in whole
panels; the weight gradients sum their rows in fixed blocks; dx runs in blocks of a fixed
number of rows). Across
instruction sets (``set_packed_isa``) the products differ by float rounding only.
"""
import gc
import resource
import threading

import numpy as np
import pytest

import fastlstm as fl
import fastlstm.lstm
from fastlstm import _limits, _threads
from fastlstm._kernels import lstm as lstm_kernels

CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(peephole=True, clip=1.0),
    dict(reverse=True, num_layers=2),
]
SIZES = [(7, 5, 13, 40), (5, 17, 33, 129), (4, 64, 70, 300), (9, 1, 8, 33), (3, 200, 16, 48)]


def run(config, size, threads, dtype="float32"):
    """Train-mode forward and backward, then an eval-mode forward, on `threads` threads."""
    T, B, n_in, H = size
    previous, previous_min = fl.get_num_threads(), fastlstm.lstm._MIN_WORK_PER_THREAD
    fl.set_num_threads(threads)
    fastlstm.lstm._MIN_WORK_PER_THREAD = 1      # let tiny sizes use every thread too
    adaptive = lstm_kernels.set_adaptive_threads(False)   # every call runs its whole team
    try:
        m = fl.LSTM(n_in, H, dtype=dtype, seed=1, **config)
        rng = np.random.default_rng(2)
        x = rng.standard_normal((T, B, n_in)).astype(dtype)
        grad = rng.standard_normal((T, B, m.num_directions * H)).astype(dtype)
        out, (h_n, c_n) = m(x)
        dx, (dh0, dc0) = m.backward(grad)
        team = lstm_kernels.last_call()[0]
        eval_out, _ = m.eval()(x)
        return team, dict(out=out, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
                          eval_out=eval_out, **{f"grad {k}": g.copy() for k, g in m.grads.items()})
    finally:
        fl.set_num_threads(previous)
        fastlstm.lstm._MIN_WORK_PER_THREAD = previous_min
        lstm_kernels.set_adaptive_threads(adaptive)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_bitwise_identical_for_any_thread_count(config, size, dtype):
    _, one = run(config, size, 1, dtype)
    for threads in (2, 3, 4):
        team, other = run(config, size, threads, dtype)
        if _threads.usable_cores() >= 2:
            assert team >= 2, "the multi-thread call ran on one thread"
        for name, value in one.items():
            np.testing.assert_array_equal(other[name], value, err_msg=f"{name}, {threads} threads")
    np.testing.assert_array_equal(one["eval_out"], one["out"], err_msg="eval vs train forward")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_streamed_gates_change_nothing(config, size, dtype):
    """Gates stored past the caches (every size, 0) give the bits of cached ones."""
    previous = lstm_kernels.set_stream_gates_bytes(1 << 60)
    try:
        _, cached = run(config, size, 2, dtype)
        lstm_kernels.set_stream_gates_bytes(0)
        _, streamed = run(config, size, 2, dtype)
    finally:
        lstm_kernels.set_stream_gates_bytes(previous)
    for name, value in cached.items():
        np.testing.assert_array_equal(streamed[name], value, err_msg=name)
    with pytest.raises(ValueError, match="size: expected bytes >= 0"):
        lstm_kernels.set_stream_gates_bytes(-1)


def test_repeated_calls_are_bitwise_identical():
    m = fl.LSTM(12, 40, num_layers=2, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((30, 6, 12)).astype(np.float32)
    first, _ = m(x)
    for _ in range(20):
        np.testing.assert_array_equal(m(x)[0], first)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_projection_through_weight_rows_gives_the_bits_of_packed_weights(threads, dtype):
    """A call whose steps fit one chunk and whose W_ih is large against x reads W_ih in its
    own rows (x's rows packed instead); the same sequences among others, in a batch too
    large for that (W_ih packed), give the same bits: both directions, eval and training
    forwards, two layers (the second with in = 2H)."""
    T, B, n_in, H = 16, 4, 1024, 128
    previous = fl.get_num_threads()
    fl.set_num_threads(threads)
    try:
        m = fl.LSTM(n_in, H, num_layers=2, bidirectional=True, dtype=dtype, seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, n_in)).astype(dtype)
        batch = np.concatenate([rng.standard_normal((T, 3, n_in)).astype(dtype), x,
                                rng.standard_normal((T, 25, n_in)).astype(dtype)], axis=1)
        for training in (False, True):
            m.train(training)
            out, (h_n, c_n) = m(x)
            assert lstm_kernels.last_projected_by_rows()
            out_batch, (h_batch, c_batch) = m(batch)
            assert not lstm_kernels.last_projected_by_rows()
            np.testing.assert_array_equal(out, out_batch[:, 3:3 + B])
            np.testing.assert_array_equal(h_n, h_batch[:, 3:3 + B])
            np.testing.assert_array_equal(c_n, c_batch[:, 3:3 + B])
    finally:
        fl.set_num_threads(previous)


@pytest.mark.parametrize("isa", lstm_kernels.supported_isas())
def test_instruction_sets_agree_to_rounding(isa):
    m = fl.LSTM(20, 70, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((10, 9, 20)).astype(np.float32)
    best, _ = m(x)
    lstm_kernels.set_packed_isa(isa)
    try:
        out, _ = m(x)
    finally:
        lstm_kernels.set_packed_isa(None)
    assert np.max(np.abs(out - best)) <= 1e-5


def test_set_packed_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="isa: expected one of"):
        lstm_kernels.set_packed_isa("sse9")
    assert lstm_kernels.packed_isa() in lstm_kernels.ISAS


# ---------------------------------------------------------------- concurrency and lifetime
def test_eval_calls_from_8_threads_while_another_module_trains():
    shared = fl.LSTM(10, 48, num_layers=2, seed=0).eval()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((15, 1 + i, 10)).astype(np.float32) for i in range(8)]
    expected = [shared(x)[0] for x in inputs]
    trained = fl.LSTM(10, 32, seed=1)
    optimizer = fl.optim.Adam(trained.parameters(), lr=1e-2)
    errors, stop = [], threading.Event()

    def evaluate(i):
        try:
            for _ in range(30):
                out, _ = shared(inputs[i])
                if not np.array_equal(out, expected[i]):
                    errors.append(f"thread {i}: result changed")
        except Exception as error:          # any failure in a thread fails the test
            errors.append(f"thread {i}: {error!r}")

    def train():
        x = rng.standard_normal((20, 4, 10)).astype(np.float32)
        while not stop.is_set():
            out, _ = trained(x)
            trained.backward(out)
            optimizer.step()
            trained.zero_grad()

    trainer = threading.Thread(target=train)
    workers = [threading.Thread(target=evaluate, args=(i,)) for i in range(8)]
    trainer.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    trainer.join()
    assert errors == []


def test_stream_sees_an_optimizer_step_between_two_steps():
    """Defined behaviour: a step uses the weights of the latest optimizer step before it,
    with the carried state."""
    m = fl.LSTM(6, 20, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    stream = m.stream()
    stream.step(x[0])
    state = tuple(s.copy() for s in stream.state)
    out, _ = m(x[:1, None])
    m.backward(np.ones_like(out))
    fl.optim.SGD(m.parameters(), lr=0.5).step()
    y = stream.step(x[1])
    _, (h, _) = m.eval()(x[1:2, None], hx=state)
    np.testing.assert_array_equal(y, h[-1, 0])


def test_dropping_the_module_keeps_its_stream_working():
    m = fl.LSTM(5, 17, num_layers=2, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    expected, _ = m(x[:, None])
    stream = m.stream()
    del m
    gc.collect()
    steps = np.stack([stream.step(x[t]) for t in range(4)])
    np.testing.assert_array_equal(steps, expected[:, 0])


@pytest.mark.slow
def test_no_memory_growth_over_20000_mixed_calls():
    rng = np.random.default_rng(0)
    m = fl.LSTM(8, 32, num_layers=2, seed=0)
    stream = m.stream(batch_size=2)
    optimizer = fl.optim.SGD(m.parameters(), lr=1e-3)
    xs = [rng.standard_normal((1 + i % 5, 1 + i % 3, 8)).astype(np.float32) for i in range(15)]

    def mixed(i):
        x = xs[i % len(xs)]
        if i % 3 == 0:
            m.train()
            out, _ = m(x, lengths=np.full(x.shape[1], x.shape[0]))
            m.backward(out)
            optimizer.step()
            m.zero_grad()
        elif i % 3 == 1:
            m.eval()(x)
        else:
            stream.step(x[0, :1].repeat(2, axis=0))

    for i in range(2000):   # warm up: buffers, caches and allocator pools settle
        mixed(i)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(20000):
        mixed(i)
    growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"peak RSS growth over 20000 calls: {growth_kib} KiB")
    assert growth_kib < 4096


# ---------------------------------------------------------------- sizes
def test_huge_hidden_size_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"hidden_size=1048576.*would need 32\.0 TiB"):
        fl.LSTM(1, 2**20)


def test_memory_refusal_names_the_bytes(monkeypatch):
    monkeypatch.setattr(_limits, "physical_memory", lambda: 1 << 30)
    with pytest.raises(ValueError, match=r"T=1000, B=512 .*training buffers would need .* GiB"):
        fl.LSTM(4, 256)(np.zeros((1000, 512, 4), np.float32))


def test_a_call_past_the_kernels_index_range_is_refused():
    """T * B * 4H = 2**31 exactly: one element past the C-int range, refused, never wrapped."""
    x = np.broadcast_to(np.float32(0), (2**15, 2**10, 1))
    with pytest.raises(ValueError, match=r"2147483648 elements; the kernels index at most"):
        fl.LSTM(1, 16).eval()(x)


def test_a_stream_past_the_kernels_index_range_is_refused():
    with pytest.raises(ValueError, match=r"stream\(batch_size=16777216\)"):
        fl.LSTM(1, 1025).stream(2**24)
