"""Masks in Keras-style models (Masking, Embedding(mask_zero=True), LSTM(go_backwards)),
checked against the unpadded per-sequence result and against Keras 3 itself (PyTorch
backend): forward outputs, and fit losses with the loss masking Keras applies."""
import os

import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, keras_lstm, require


def keras_module():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = require("keras")
    if keras.backend.backend() != "torch":
        pytest.fail(f"keras was imported with the {keras.backend.backend()!r} backend")
    return keras


def padded_batch(rng, lengths, T, features, dtype):
    x = rng.standard_normal((len(lengths), T, features)).astype(dtype)
    for row, length in zip(x, lengths):
        row[length:] = 0
    return x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_lstm_equals_each_sequence_alone(dtype, go_backwards, return_sequences):
    rng = np.random.default_rng(1)
    lengths, T, features, H = [5, 1, 3, 5], 5, 2, 3
    x = padded_batch(rng, lengths, T, features, dtype)
    model = fl.Sequential([fl.layers.Masking(input_shape=(T, features), dtype=dtype),
                           fl.layers.LSTM(H, return_sequences=return_sequences,
                                          go_backwards=go_backwards, dtype=dtype)], seed=0)
    out = model.predict(x)
    kernel, recurrent, bias = (w.astype(np.float64) for w in model.get_weights())
    tol = 1e-5 if dtype == "float32" else 1e-12
    for b, length in enumerate(lengths):
        seq, h, _ = keras_lstm(x[b:b + 1, :length].astype(np.float64), kernel, recurrent,
                               bias, go_backwards=go_backwards)
        if not return_sequences:
            assert_close(f"sample {b} final state", out[b], h[0], tol)
        elif go_backwards:   # leading masked steps output zeros, then the reversed run
            assert_close(f"sample {b}", out[b, T - length:], seq[0], tol)
            assert np.all(out[b, :T - length] == 0)
        else:                # masked steps repeat the last valid output
            assert_close(f"sample {b}", out[b, :length], seq[0], tol)
            assert np.all(out[b, length:] == out[b, length - 1])


def test_go_backwards_matches_keras_equations_unmasked():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 3))
    layer = fl.layers.LSTM(2, return_sequences=True, go_backwards=True, dtype="float64",
                           seed=0)
    out = layer(x)
    seq, _, _ = keras_lstm(x, *layer.get_weights(), go_backwards=True)
    assert_close("go_backwards outputs (processing order)", out, seq, 1e-12)


@pytest.mark.parametrize("kind", ["lstm", "go_backwards", "bidirectional"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_masking_matches_keras(kind, return_sequences):
    keras = keras_module()
    rng = np.random.default_rng(3)
    T, features = 5, 3
    x = padded_batch(rng, [5, 3, 0, 1], T, features, np.float32)   # one sample fully masked
    inputs = keras.Input((T, features))
    inner = dict(return_sequences=return_sequences)
    if kind == "bidirectional":
        theirs_layer = keras.layers.Bidirectional(keras.layers.LSTM(2, **inner))
        ours_layer = fl.layers.Bidirectional(fl.layers.LSTM(2, **inner))
    else:
        inner["go_backwards"] = kind == "go_backwards"
        theirs_layer, ours_layer = keras.layers.LSTM(2, **inner), fl.layers.LSTM(2, **inner)
    theirs = keras.Model(inputs, theirs_layer(keras.layers.Masking(0.0)(inputs)))
    ours = fl.Sequential([fl.layers.Masking(0.0, input_shape=(T, features)), ours_layer])
    ours.set_weights(theirs.get_weights())
    assert_close(f"{kind} masked outputs", ours.predict(x), theirs.predict(x, verbose=0), 1e-6)


def test_embedding_mask_zero_fit_matches_keras():
    """Embedding(mask_zero) -> LSTM(return_sequences) -> Dense: the mask reaches the loss,
    which Keras weights (B*T)/valid at the valid steps."""
    keras = keras_module()
    rng = np.random.default_rng(4)
    n, T, vocab = 24, 6, 7
    lengths = rng.integers(1, T + 1, n)
    tokens = rng.integers(1, vocab, (n, T))
    tokens[np.arange(T) >= lengths[:, None]] = 0
    y = rng.standard_normal((n, T, 1)).astype(np.float32)
    keras.utils.set_random_seed(0)
    theirs = keras.Sequential([keras.Input((T,)), keras.layers.Embedding(vocab, 4, mask_zero=True),
                               keras.layers.LSTM(3, return_sequences=True),
                               keras.layers.Dense(1)])
    ours = fl.Sequential([fl.layers.Embedding(vocab, 4, mask_zero=True, input_shape=(T,)),
                          fl.layers.LSTM(3, return_sequences=True), fl.layers.Dense(1)],
                         seed=0)
    ours.set_weights(theirs.get_weights())
    for model in (theirs, ours):
        model.compile(optimizer="adam", loss="mse")
    their_history = theirs.fit(tokens, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    our_history = ours.fit(tokens, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert_close("masked epoch losses", our_history.history["loss"],
                 their_history.history["loss"], 1e-5)
    for mine, their in zip(ours.get_weights(), theirs.get_weights()):
        assert_close("weights after masked training", mine, their, 1e-5)
    assert_close("masked evaluate", ours.evaluate(tokens, y),
                 theirs.evaluate(tokens, y, verbose=0), 1e-5)


def test_mask_stops_after_last_step_lstm():
    model = fl.Sequential([fl.layers.Masking(input_shape=(4, 2)), fl.layers.Dropout(0.5),
                           fl.layers.LSTM(3), fl.layers.Dense(1)], seed=0)
    x = padded_batch(np.random.default_rng(5), [4, 2], 4, 2, np.float32)
    out, lengths = model._run(x)
    assert out.shape == (2, 1) and lengths is None
    seq = fl.Sequential([fl.layers.Masking(input_shape=(4, 2)),
                         fl.layers.LSTM(3, return_sequences=True), fl.layers.Dense(1)])
    assert seq._run(x)[1].tolist() == [4, 2]


def test_masked_gradient_matches_unpadded():
    """Gradients of a padded, masked batch equal the sum over the sequences run alone."""
    rng = np.random.default_rng(6)
    lengths, T = [3, 1, 2], 3
    x = padded_batch(rng, lengths, T, 2, np.float64)
    layer = fl.layers.LSTM(2, return_sequences=True, dtype="float64", seed=0)
    layer.build((T, 2))
    grad_out = rng.standard_normal((3, T, 2))
    layer.zero_grad()
    layer(x, lengths=np.array(lengths))
    dx = layer.backward(grad_out)
    padded_grads = [g.copy() for g in layer.grads.values()]
    layer.zero_grad()
    for b, length in enumerate(lengths):
        layer(x[b:b + 1, :length])
        g = grad_out[b:b + 1, :length].copy()
        g[:, -1] += grad_out[b, length:].sum(axis=0)   # carried outputs feed the last step
        dx_b = layer.backward(g)
        assert_close(f"dx sample {b}", dx[b, :length], dx_b[0], 1e-12)
        assert np.all(dx[b, length:] == 0)
    for padded, alone in zip(padded_grads, layer.grads.values()):
        assert_close("weight gradients", padded, alone, 1e-12)


def test_mask_with_holes_is_refused():
    x = np.ones((2, 4, 1), np.float32)
    x[1, 1] = 0   # a masked step followed by valid ones
    model = fl.Sequential([fl.layers.Masking(input_shape=(4, 1)), fl.layers.LSTM(2)])
    with pytest.raises(ValueError, match=r"sample 1 has a masked step followed by an unmasked"):
        model.predict(x)
    emb = fl.Sequential([fl.layers.Embedding(5, 2, mask_zero=True, input_shape=(3,)),
                         fl.layers.LSTM(2)])
    with pytest.raises(ValueError, match=r"Embedding mask_zero.*sample 0"):
        emb.predict(np.array([[0, 1, 2]]))


def test_bad_lengths_and_go_backwards_in_bidirectional_are_refused():
    layer = fl.layers.LSTM(2, seed=0)
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 3\]"):
        layer(np.ones((1, 3, 1)), lengths=np.array([4]))
    with pytest.raises(ValueError, match="go_backwards=False"):
        fl.layers.Bidirectional(fl.layers.LSTM(2, go_backwards=True))


def test_masking_layers_roundtrip_config():
    model = fl.Sequential([fl.layers.Embedding(5, 2, mask_zero=True, input_shape=(3,)),
                           fl.layers.LSTM(2, go_backwards=True, return_sequences=True),
                           fl.layers.Masking(0.5)], seed=0)
    again = fl.Sequential.from_config(model.get_config())
    assert again.layers[0].mask_zero and again.layers[1].go_backwards
    assert again.layers[2].mask_value == 0.5
