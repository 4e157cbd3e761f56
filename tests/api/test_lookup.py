"""Embedding lookups read by the LSTM (``Embedding.lookup``): the first layer projects each
table row once instead of each looked-up row. Results and gradients equal those of the
looked-up array, the table path is really taken where it pays, and bad input is refused."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm import lstm as lstm_module
from conftest import assert_close, central_differences

L = fl.layers


def _spy_tokens(monkeypatch):
    """Record the number of tokens every kernel forward call receives."""
    seen = []
    prepare = lstm_module._lstm.prepare_forward

    def recording(*args):
        seen.append(len(args[9]))
        return prepare(*args)
    monkeypatch.setattr(lstm_module._lstm, "prepare_forward", recording)
    return seen


def _run(lookup, dtype, V, T, B, n_in, H, num_layers, bidirectional, batch_first, lengths,
         padding_idx):
    embedding = fl.Embedding(V, n_in, padding_idx=padding_idx, dtype=dtype, seed=1)
    lstm = fl.LSTM(n_in, H, num_layers=num_layers, bidirectional=bidirectional,
                   batch_first=batch_first, dtype=dtype, seed=2)
    rng = np.random.default_rng(3)
    indices = rng.integers(0, V, (B, T) if batch_first else (T, B))
    x = embedding.lookup(indices) if lookup else embedding(indices)
    out, (h_n, c_n) = lstm(x, lengths=lengths)
    grad = rng.standard_normal(out.shape).astype(dtype)
    dx, (dh0, dc0) = lstm.backward(grad, (0.5 * h_n, 0.25 * c_n))
    if lookup:
        assert dx is None
    else:
        embedding.backward(dx)
    return {"out": out, "h_n": h_n, "c_n": c_n, "dh0": dh0, "dc0": dc0,
            "embedding": embedding.grads["weight"], **lstm.grads}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("lengths, padding_idx", [(None, None), ([9, 3, 9, 1, 5], 2)])
@pytest.mark.parametrize("V", [7, 40])   # 7: the table path; 40 > T*B/2: the rows
def test_lookup_equals_the_looked_up_rows(monkeypatch, dtype, num_layers, bidirectional,
                                          batch_first, lengths, padding_idx, V):
    sizes = dict(V=V, T=9, B=5, n_in=6, H=17, num_layers=num_layers,
                 bidirectional=bidirectional, batch_first=batch_first, lengths=lengths,
                 padding_idx=padding_idx)
    expected = _run(False, dtype, **sizes)
    tokens = _spy_tokens(monkeypatch)
    actual = _run(True, dtype, **sizes)
    first_layer = tokens[:2 if bidirectional else 1]
    assert all(n == (45 if V == 7 else 0) for n in first_layer), tokens
    assert all(n == 0 for n in tokens[len(first_layer):])
    rtol = 2e-6 if dtype == "float32" else 1e-12
    for name, value in expected.items():
        assert_close(name, actual[name], value, rtol)


@pytest.mark.parametrize("V", [7, 40])   # the table path, and the rows
def test_lookup_gradient_is_kept_without_input_grad(V):
    """The embedding's gradient is a parameter's: input_grad=False leaves it as it was."""
    grads = []
    for input_grad in (True, False):
        embedding = fl.Embedding(V, 6, seed=1)
        lstm = fl.LSTM(6, 5, seed=2)
        indices = np.random.default_rng(3).integers(0, V, (9, 5))
        out, _ = lstm(embedding.lookup(indices))
        dx, _ = lstm.backward(np.cos(out), input_grad=input_grad)
        assert dx is None
        grads.append({"embedding": embedding.grads["weight"].copy(), **lstm.grads})
    assert all(np.array_equal(grads[0][k], grads[1][k]) for k in grads[0])


def test_lookup_of_unbatched_indices_and_of_another_dtype():
    embedding = fl.Embedding(5, 4, seed=1)
    for lstm in (fl.LSTM(4, 3, seed=2), fl.LSTM(4, 3, dtype="float64", seed=2)):
        indices = np.arange(20) % 5
        looked_up = lstm(embedding(indices))[0]
        assert_close("out", lstm(embedding.lookup(indices))[0], looked_up, 1e-6)


def test_lookup_gradient_matches_central_differences():
    """float64: d(sum(out * w)) / d(embedding table), through the table path."""
    embedding = fl.Embedding(4, 3, dtype="float64", seed=0)
    lstm = fl.LSTM(3, 5, bidirectional=True, dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    indices = rng.integers(0, 4, (6, 3))
    weights = rng.standard_normal((6, 3, 10))

    def loss(_):
        return float(np.sum(lstm(embedding.lookup(indices))[0] * weights))
    lstm.train()
    loss(None)
    assert lstm._kept["tokens"] is not None
    embedding.zero_grad()
    lstm.backward(weights)
    numeric = central_differences(loss, embedding.weight)
    assert_close("dtable", embedding.grads["weight"], numeric, 1e-7)


@pytest.mark.parametrize("mask_zero", [False, True])
def test_sequential_reads_the_embedding_through_a_lookup(monkeypatch, mask_zero):
    """Embedding -> LSTM in Sequential takes the table path and trains exactly as the same
    layers run one after another on the looked-up array (with mask_zero: samples of every
    length, 0 included)."""
    def model():
        return fl.Sequential([L.Embedding(6, 4, mask_zero=mask_zero),
                              L.LSTM(8, return_sequences=True), L.Dense(6)], seed=0)
    rng = np.random.default_rng(1)
    x, y = rng.integers(1, 6, (8, 5)), rng.standard_normal((8, 5, 6)).astype(np.float32)
    if mask_zero:
        for b in range(8):
            x[b, b * 5 // 7:] = 0
    ours, chained = model(), model()
    ours.build((5,))
    chained.build((5,))
    tokens = _spy_tokens(monkeypatch)
    grad = 2 * (ours.forward(x) - y)
    assert tokens == [30 if mask_zero else 40]   # mask_zero: two samples of length 0 skip
    ours.backward(grad)
    lengths = chained.layers[0].output_lengths(x, None)
    h = chained.layers[1](chained.layers[0](x), lengths=lengths)
    assert_close("output", chained.layers[2](h), ours.forward(x), 1e-6)
    chained.layers[0].backward(chained.layers[1].backward(chained.layers[2].backward(grad)))
    for (name, value), (_, expected) in zip(ours.grads.items(), chained.grads.items()):
        assert_close(name, value, expected, 1e-5)


def test_sequential_with_input_dropout_reads_the_rows(monkeypatch):
    model = fl.Sequential([L.Embedding(6, 4), L.LSTM(8, dropout=0.5), L.Dense(2)], seed=0)
    tokens = _spy_tokens(monkeypatch)
    model.compile("sgd", "mse")
    model.train_on_batch(np.zeros((8, 5), int), np.zeros((8, 2), np.float32))
    assert tokens == [0]
    model.eval()
    model.forward(np.zeros((8, 5), int))
    assert tokens[-1] == 40     # no dropout at inference: the table path again


def test_bad_lookups_are_refused():
    embedding = fl.Embedding(5, 4, seed=1)
    with pytest.raises(ValueError, match="input_size 3|embedding lookup"):
        fl.LSTM(3, 2)(embedding.lookup(np.zeros((4, 2), int)))
    with pytest.raises(ValueError, match=r"indices: expected indices in \[0, 5\)"):
        embedding.lookup(np.full((4, 2), 5))
    layer = L.Embedding(5, 4)
    layer.lookup(np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="grad_out: expected None after Embedding.lookup"):
        layer.backward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="input dropout"):
        lstm = L.LSTM(3, dropout=0.5)
        lstm.build((3, 4))
        lstm(L.Embedding(5, 4).lookup(np.zeros((2, 3), int)))


def test_kernel_refuses_tokens_outside_the_table():
    lstm = fl.LSTM(3, 2)
    T, B, H = 2, 1, 2
    f32 = np.float32
    args = [np.zeros((T, B, H), f32), 0, np.zeros((B, H), f32), np.zeros((B, H), f32),
            np.zeros(0, f32), np.zeros(0, f32), np.zeros(0, f32),
            np.zeros(0, np.uint8), np.zeros((4, 3), f32), np.array([0, 4], np.intp),
            np.zeros((B, H), f32), np.zeros((B, H), f32), lstm.weight_ih_l0, lstm.weight_hh_l0,
            np.zeros(4 * H, f32), np.zeros(4 * H, f32), np.zeros(0, f32), np.zeros(0, np.intp),
            False, False, 0.0]
    with pytest.raises(ValueError, match=r"tokens: expected values in \[0, 4\)"):
        lstm_module._lstm.prepare_forward(*args)
