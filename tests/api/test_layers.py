"""Keras-style layers: Keras' equations and layouts, shapes, init, gradients, state."""
import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, central_differences, keras_lstm

L = fl.layers


def keras_weights(rng, n_in, H):
    return [rng.uniform(-0.5, 0.5, s) for s in ((n_in, 4 * H), (H, 4 * H), (4 * H,))]


@pytest.mark.parametrize("B, T, n_in, H", [(3, 5, 4, 6), (1, 1, 1, 1), (2, 7, 9, 3)])
def test_lstm_layer_follows_keras_equations(B, T, n_in, H):
    rng = np.random.default_rng(B + T + n_in + H)
    weights = keras_weights(rng, n_in, H)
    x = rng.standard_normal((B, T, n_in))
    seq, h, c = keras_lstm(x, *weights)
    layer = L.LSTM(H, return_sequences=True, return_state=True, dtype="float64",
                   input_shape=(T, n_in))
    layer.set_weights(weights)
    out, h_n, c_n = layer(x)
    assert_close("LSTM layer sequences vs Keras equations", out, seq, 1e-12)
    assert_close("LSTM layer h vs Keras", h_n, h, 1e-12)
    assert_close("LSTM layer c vs Keras", c_n, c, 1e-12)
    last = L.LSTM(H, dtype="float64", input_shape=(T, n_in))
    last.set_weights(weights)
    assert_close("LSTM layer last output vs Keras", last(x), h, 1e-12)
    for got, want in zip(last.get_weights(), weights):
        assert_close("get_weights returns Keras layout", got, want, 1e-15)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_follows_keras(merge_mode, return_sequences):
    rng = np.random.default_rng(1)
    B, T, n_in, H = 2, 4, 3, 5
    forward_w, backward_w = keras_weights(rng, n_in, H), keras_weights(rng, n_in, H)
    x = rng.standard_normal((B, T, n_in))
    seq_f, h_f, _ = keras_lstm(x, *forward_w)
    seq_b, h_b, _ = keras_lstm(x, *backward_w, go_backwards=True)
    if return_sequences:  # Keras re-reverses the backward outputs to align them with x
        a, b = seq_f, seq_b[:, ::-1]
    else:
        a, b = h_f, h_b
    expected = {"concat": np.concatenate([a, b], -1), "sum": a + b, "ave": (a + b) / 2}[merge_mode]
    layer = L.Bidirectional(L.LSTM(H, return_sequences=return_sequences, dtype="float64"),
                            merge_mode=merge_mode, input_shape=(T, n_in))
    layer.set_weights(forward_w + backward_w)
    out = layer(x)
    assert_close(f"Bidirectional {merge_mode} vs Keras", out, expected, 1e-12)
    assert out.shape[1:] == layer.compute_output_shape((T, n_in))
    projection = rng.standard_normal(out.shape)
    dx = layer.backward(projection)
    layer.eval()
    assert_close(f"Bidirectional {merge_mode} dx vs central differences", dx, central_differences(
        lambda v: float(np.sum(layer(v) * projection)), x.copy()), 1e-7)


def test_bidirectional_return_state_order_is_keras():
    """[output, h_forward, c_forward, h_backward, c_backward]."""
    rng = np.random.default_rng(8)
    forward_w, backward_w = keras_weights(rng, 2, 3), keras_weights(rng, 2, 3)
    x = rng.standard_normal((2, 4, 2))
    _, h_f, c_f = keras_lstm(x, *forward_w)
    _, h_b, c_b = keras_lstm(x, *backward_w, go_backwards=True)
    layer = L.Bidirectional(L.LSTM(3, return_state=True, dtype="float64"), input_shape=(4, 2))
    layer.set_weights(forward_w + backward_w)
    out, *states = layer(x)
    assert_close("Bidirectional output", out, np.concatenate([h_f, h_b], -1), 1e-12)
    for got, want, label in zip(states, (h_f, c_f, h_b, c_b), ("h_f", "c_f", "h_b", "c_b")):
        assert_close(f"Bidirectional state {label}", got, want, 1e-12)


def test_keras_initialisation():
    layer = L.LSTM(6, input_shape=(None, 4), seed=0)
    assert not layer.built and layer.get_weights() == []  # built late, as in Keras
    layer.build((None, 4))
    lstm = layer.lstm
    assert lstm.batch_first and lstm.dtype == np.float32 and layer.built_input_shape == (None, 4)
    w_hh = lstm.weight_hh_l0.astype(np.float64)  # (4H, H): orthonormal columns
    assert_close("orthogonal recurrent kernel", w_hh.T @ w_hh, np.eye(6), 1e-6)
    limit = np.sqrt(6 / (4 + 24))
    assert np.abs(lstm.weight_ih_l0).max() <= limit
    assert np.all(lstm.bias_ih_l0[6:12] == 1) and np.count_nonzero(lstm.bias_ih_l0) == 6
    assert np.all(lstm.bias_hh_l0 == 0)
    dense = L.Dense(3, seed=0)
    dense.build((5,))
    assert np.abs(dense.kernel).max() <= np.sqrt(6 / 8) and np.all(dense.bias == 0)
    emb = L.Embedding(10, 4, seed=0)
    emb.build((7,))
    assert np.abs(emb.embeddings).max() <= 0.05
    same = L.LSTM(6, seed=0)
    same(np.zeros((1, 2, 4)))
    assert np.array_equal(same.lstm.weight_hh_l0, lstm.weight_hh_l0)  # seeded


@pytest.mark.parametrize("return_state", [False, True])
def test_lstm_layer_gradients(return_state):
    rng = np.random.default_rng(2)
    layer = L.LSTM(3, return_state=return_state, dtype="float64", seed=1)
    x = rng.standard_normal((2, 4, 2))
    out = layer(x)
    outputs = out if return_state else [out]
    projections = [rng.standard_normal(o.shape) for o in outputs]
    if return_state:
        dx = layer.backward(projections[0], grad_state=tuple(projections[1:]))
    else:
        dx = layer.backward(projections[0])
    grads = {name: g.copy() for name, g in layer.grads.items()}

    def objective(v):
        result = layer.eval()(v)
        layer.train()
        return sum(float(np.sum(o * p)) for o, p in
                   zip(result if return_state else [result], projections))

    assert_close(f"LSTM layer (return_state={return_state}) dx", dx,
                 central_differences(objective, x.copy()), 1e-7)
    for name, array in layer.named_parameters():   # Keras' kernel, recurrent_kernel, bias
        def objective_param(values, array=array):
            saved = array.copy()
            array[...] = values
            value = objective(x)
            array[...] = saved
            return value

        assert_close(f"LSTM layer d{name}", grads[name],
                     central_differences(objective_param, array.copy()), 1e-7)


@pytest.mark.parametrize("first", ["lstm", "masked-lstm", "bidirectional", "dense"])
def test_training_skips_the_input_gradient_with_the_same_parameter_gradients(first):
    """Sequential.backward(input_grad=False), as training calls it, skips the first layer's
    dx (None comes back) and leaves every parameter gradient's bits as they were."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 7, 4)).astype(np.float32)
    if first == "masked-lstm":
        x[1, 3:] = 0
        x[4] = 0    # a sample with no steps
    g = rng.standard_normal((6, 3)).astype(np.float32)

    def model():
        stack = {"lstm": [L.LSTM(5)], "masked-lstm": [L.Masking(), L.LSTM(5)],
                 "bidirectional": [L.Bidirectional(L.LSTM(5))],
                 "dense": [L.Dense(5), L.LSTM(5)]}[first]
        return fl.Sequential(stack + [L.Dense(3)], seed=0)

    grads = []
    for input_grad in (True, False):
        m = model()
        m.build((7, 4))
        m.train()
        m(x)
        dx = m.backward(g, input_grad=input_grad)
        assert dx is None if not input_grad else dx.shape == x.shape
        grads.append({k: v.copy() for k, v in m.grads.items()})
    assert all(np.array_equal(grads[0][k], grads[1][k]) for k in grads[0])


def test_train_on_batch_asks_the_first_lstm_for_no_input_gradient(monkeypatch):
    from fastlstm import lstm as lstm_module
    dx_rows = []
    backward = lstm_module._lstm.lstm_backward

    def recording(dx, *args):
        dx_rows.append(dx.shape[0])
        return backward(dx, *args)
    monkeypatch.setattr(lstm_module._lstm, "lstm_backward", recording)
    model = fl.Sequential([L.LSTM(5, return_sequences=True), L.LSTM(5), L.Dense(2)], seed=0)
    model.compile("sgd", "mse")
    model.train_on_batch(np.ones((3, 4, 2), np.float32), np.zeros((3, 2), np.float32))
    assert dx_rows == [12, 0]   # the second LSTM's dx feeds the first; the first's is skipped


def test_input_dropout_shares_one_mask_over_time():
    rng = np.random.default_rng(3)
    layer = L.LSTM(4, return_sequences=True, dropout=0.5, seed=2, dtype="float64")
    x = rng.standard_normal((8, 5, 6))
    out = layer(x)
    dx = layer.backward(np.ones_like(out))
    dropped = np.all(dx == 0, axis=1)  # (B, in): a feature is dropped at every step or none
    assert dropped.any() and not dropped.all()
    assert np.all((dx == 0) == dropped[:, None, :])
    layer.eval()
    assert np.array_equal(layer(x), layer(x))  # no dropout in eval mode


def test_stateful_lstm_carries_state_between_calls():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 3))
    whole = L.LSTM(4, return_sequences=True, dtype="float64", seed=5)
    stateful = L.LSTM(4, return_sequences=True, stateful=True, dtype="float64", seed=5)
    full = whole(x)
    parts = np.concatenate([stateful(x[:, :3]), stateful(x[:, 3:])], axis=1)
    assert_close("stateful: two halves equal one call", parts, full, 1e-12)
    stateful.reset_states()
    assert_close("stateful: reset_states starts from zeros", stateful(x[:, :3]), full[:, :3],
                 1e-12)
    with pytest.raises(ValueError, match="stateful LSTM keeps batch size 2, got 1"):
        stateful(x[:1, :3])


def test_dense_activations_and_logits():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 5))
    layer = L.Dense(6, activation="softmax", dtype="float64", seed=0)
    probs = layer(x)
    assert probs.shape == (4, 3, 6) and np.allclose(probs.sum(-1), 1)
    layer.backward(np.zeros_like(probs))
    z = layer(x, logits=True)
    assert_close("Dense logits then softmax", np.exp(z) / np.exp(z).sum(-1, keepdims=True),
                 probs, 1e-12)
    dx = layer.backward(np.ones_like(z))  # gradient with respect to the logits
    assert_close("Dense logits backward is linear", dx, np.ones_like(z) @ layer.kernel.T, 1e-12)
    assert L.Dense(2)(np.ones((3, 4), np.float32)).dtype == np.float32


def test_embedding_and_dropout_layers():
    emb = L.Embedding(7, 3, dtype="float64", seed=0)
    tokens = np.array([[1, 2], [2, 6]])
    out = emb(tokens)
    assert_close("Embedding layer lookup", out, emb.embeddings[tokens], 0)
    emb.backward(np.ones((2, 2, 3)))
    assert emb.grads["embeddings"][2].tolist() == [2, 2, 2]
    drop = L.Dropout(0.25, seed=1)
    x = np.ones((100, 40), np.float32)
    y = drop(x)
    assert abs((y == 0).mean() - 0.25) < 0.02 and np.allclose(y[y != 0], 1 / 0.75)
    assert np.array_equal(drop.backward(x), y)
    drop.eval()
    assert np.array_equal(drop(x), x)


def test_output_shapes_are_inferred():
    cases = [(L.LSTM(8), (5, 3), (8,)),
             (L.LSTM(8, return_sequences=True), (None, 3), (None, 8)),
             (L.Bidirectional(L.LSTM(8, return_sequences=True)), (5, 3), (5, 16)),
             (L.Bidirectional(L.LSTM(8), merge_mode="sum"), (5, 3), (8,)),
             (L.Dense(4), (5, 3), (5, 4)),
             (L.Embedding(10, 6), (5,), (5, 6)),
             (L.Dropout(0.1), (5, 3), (5, 3))]
    for layer, input_shape, output_shape in cases:
        layer.build(input_shape)
        assert layer.compute_output_shape(input_shape) == output_shape
        sample = (np.zeros((2,) + tuple(4 if s is None else s for s in input_shape))
                  if not isinstance(layer, L.Embedding) else np.zeros((2, 5), int))
        assert layer(sample).shape[1:] == tuple(4 if s is None else s for s in output_shape)


def test_configs_round_trip():
    layers = [L.LSTM(5, return_sequences=True, dropout=0.2, seed=3, name="enc"),
              L.Bidirectional(L.LSTM(4, unit_forget_bias=False), merge_mode="ave", seed=1),
              L.Dense(2, activation="tanh", use_bias=False, dtype="float64"),
              L.Embedding(9, 2, input_shape=(3,)), L.Dropout(0.4)]
    for layer in layers:
        again = L.deserialize(L.serialize(layer))
        assert type(again) is type(layer) and again.get_config() == layer.get_config()


def test_bad_layer_arguments_raise():
    with pytest.raises(ValueError, match="activation: only 'tanh'"):
        L.LSTM(4, activation="relu")
    with pytest.raises(ValueError, match="activation"):
        L.Dense(4, activation="swish")
    with pytest.raises(ValueError, match="units"):
        L.Dense(0)
    with pytest.raises(ValueError, match="dropout"):
        L.LSTM(4, dropout=1.0)
    with pytest.raises(TypeError, match="layer: expected a fastlstm.layers.LSTM"):
        L.Bidirectional(L.Dense(3))
    with pytest.raises(ValueError, match="merge_mode"):
        L.Bidirectional(L.LSTM(3), merge_mode="mul")
    with pytest.raises(ValueError, match=r"input_shape: LSTM expects \(timesteps, features\)"):
        L.LSTM(3).build((4,))
    layer = L.LSTM(3, input_shape=(4, 2))
    with pytest.raises(ValueError, match=r"x: lstm expects inputs of shape \('batch', 4, 2\)"):
        layer(np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="weights: expected 3 arrays"):
        layer.set_weights([np.zeros((2, 12))])
    with pytest.raises(ValueError, match="set_weights needs the layer built"):
        L.Dense(2).set_weights([np.zeros((3, 2)), np.zeros(2)])
