"""fit(sample_weight=, class_weight=) against Keras 3 itself; checkpoints that resume
(model.save + fl.load_model); NaN targets and losses; the mode of loaded models."""
import os

import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, require


def keras_module():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = require("keras")
    if keras.backend.backend() != "torch":
        pytest.fail(f"keras was imported with the {keras.backend.backend()!r} backend")
    return keras


def twin_models(keras, T, features, units, activation, loss):
    keras.utils.set_random_seed(0)
    theirs = keras.Sequential([keras.Input((T, features)), keras.layers.LSTM(4),
                               keras.layers.Dense(units, activation=activation)])
    ours = fl.Sequential([fl.layers.LSTM(4, input_shape=(T, features)),
                          fl.layers.Dense(units, activation=activation)], seed=0)
    ours.set_weights(theirs.get_weights())
    theirs.compile(optimizer="adam", loss=loss)
    ours.compile(optimizer="adam", loss=loss)
    return theirs, ours


def assert_same_training(theirs, ours, x, y, **fit_kwargs):
    their_history = theirs.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
                               **fit_kwargs)
    our_history = ours.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
                           **fit_kwargs)
    assert set(our_history.history) == set(their_history.history)
    for key, values in their_history.history.items():
        assert_close(key, our_history.history[key], values, 1e-5)
    for mine, their in zip(ours.get_weights(), theirs.get_weights()):
        assert_close("weights", mine, their, 1e-5)


@pytest.mark.parametrize("validation", [None, "split", "data3"])
def test_sample_weight_matches_keras(validation):
    keras = keras_module()
    rng = np.random.default_rng(0)
    n, T, features = 30, 4, 2
    x = rng.standard_normal((n, T, features)).astype(np.float32)
    y = rng.standard_normal((n, 1)).astype(np.float32)
    weights = rng.uniform(0, 3, n).astype(np.float32)
    kwargs = {"sample_weight": weights}
    if validation == "split":      # Keras splits the weights too: weighted validation
        kwargs["validation_split"] = 0.2
    elif validation == "data3":
        kwargs["validation_data"] = (x[:7], y[:7], weights[:7])
    theirs, ours = twin_models(keras, T, features, 1, None, "mse")
    assert_same_training(theirs, ours, x, y, **kwargs)


@pytest.mark.parametrize("targets", ["sparse", "one_hot"])
def test_class_weight_matches_keras(targets):
    keras = keras_module()
    rng = np.random.default_rng(1)
    n, T, features, classes = 32, 3, 2, 3
    x = rng.standard_normal((n, T, features)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    if targets == "sparse":
        y, loss = labels, "sparse_categorical_crossentropy"
    else:
        y, loss = np.eye(classes, dtype=np.float32)[labels], "categorical_crossentropy"
    theirs, ours = twin_models(keras, T, features, classes, "softmax", loss)
    # class 2 is not listed: weight 1; validation stays unweighted
    assert_same_training(theirs, ours, x, y, class_weight={0: 0.25, 1: 4.0},
                         validation_data=(x[:9], y[:9]))


@pytest.mark.parametrize("metric", ["mae", "mse", "accuracy"])
def test_metrics_and_weighted_metrics_match_keras_with_masks_and_weights(metric):
    """Keras: ``metrics`` see the output's mask but not the sample weights;
    ``weighted_metrics`` see both (renamed ``weighted_*`` where a name repeats)."""
    keras = keras_module()
    rng = np.random.default_rng(3)
    n, T, features, units = 12, 5, 2, 3
    x = rng.standard_normal((n, T, features)).astype(np.float32)
    for i, length in enumerate(rng.integers(1, T + 1, n)):
        x[i, length:] = 0.0                     # padding after the end: masked by Masking
    if metric == "accuracy":
        y = np.eye(units, dtype=np.float32)[rng.integers(0, units, (n, T))]
        activation, loss = "softmax", "categorical_crossentropy"
    else:
        y = rng.standard_normal((n, T, units)).astype(np.float32)
        activation, loss = None, "mse"
    # per step: Keras' torch backend fails to broadcast per-sample weights against a mask
    weights = rng.uniform(0, 2, (n, T)).astype(np.float32)
    keras.utils.set_random_seed(0)
    theirs = keras.Sequential([keras.Input((T, features)), keras.layers.Masking(0.0),
                               keras.layers.LSTM(4, return_sequences=True),
                               keras.layers.Dense(units, activation=activation)])
    ours = fl.Sequential([fl.layers.Masking(0.0, input_shape=(T, features)),
                          fl.layers.LSTM(4, return_sequences=True),
                          fl.layers.Dense(units, activation=activation)], seed=0)
    ours.set_weights(theirs.get_weights())
    for model in (theirs, ours):
        model.compile(optimizer="sgd", loss=loss, metrics=[metric],
                      weighted_metrics=[metric, "mae" if metric != "mae" else "mse"])
    names = ["loss"] + [m.name for m in ours.metrics + ours.weighted_metrics]
    for sample_weight in (weights, None):
        their_logs = theirs.evaluate(x, y, sample_weight=sample_weight, batch_size=5,
                                     verbose=0, return_dict=True)
        our_values = ours.evaluate(x, y, sample_weight=sample_weight, batch_size=5)
        assert sorted(names) == sorted(their_logs), (names, their_logs)
        for name, value in zip(names, our_values):
            assert_close(name, value, their_logs[name], 1e-5)
    their_history = theirs.fit(x, y, sample_weight=weights, epochs=2, batch_size=5,
                               shuffle=False, verbose=0).history
    our_history = ours.fit(x, y, sample_weight=weights, epochs=2, batch_size=5,
                           shuffle=False, verbose=0).history
    for name, values in their_history.items():
        assert_close(f"fit {name}", our_history[name], values, 1e-5)


def test_weights_scale_the_loss_as_keras_documents():
    """A batch loss is sum(w * l) / n: doubling every weight doubles it, zero weights
    remove samples, and unit weights change nothing."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3, 2))
    y = rng.standard_normal((6, 1))
    model = fl.Sequential([fl.layers.LSTM(2, input_shape=(3, 2), dtype="float64"),
                           fl.layers.Dense(1, dtype="float64")], seed=0)
    model.compile(optimizer="sgd", loss="mse")
    plain = model.evaluate(x, y)
    assert model.evaluate(x, y, sample_weight=np.ones(6)) == pytest.approx(plain, rel=1e-14)
    assert model.evaluate(x, y, sample_weight=np.full(6, 2.0)) == pytest.approx(2 * plain,
                                                                                rel=1e-14)
    w = np.array([1, 1, 1, 0, 0, 0.0])
    per_sample = (model.predict(x) - y)[:, 0] ** 2
    assert model.evaluate(x, y, sample_weight=w) == pytest.approx(per_sample[:3].sum() / 6,
                                                                  rel=1e-12)


def test_weight_arguments_are_checked():
    model = fl.Sequential([fl.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((4, 2)), np.ones((4, 1))
    with pytest.raises(ValueError, match="give one of them"):
        model.fit(x, y, sample_weight=np.ones(4), class_weight={0: 1.0}, verbose=0)
    with pytest.raises(ValueError, match=r"sample_weight: expected one entry per sample \(4\)"):
        model.fit(x, y, sample_weight=np.ones(3), verbose=0)
    with pytest.raises(TypeError, match="class_weight: expected a dict"):
        model.fit(x, y, class_weight=[1.0, 2.0], verbose=0)
    with pytest.raises(ValueError, match="validation_data: expected"):
        model.fit(x, y, validation_data=(x, y, None, None), verbose=0)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_save_and_load_model_resume_training_exactly(tmp_path, optimizer):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 5, 3)).astype(np.float32)
    y = rng.standard_normal((20, 1)).astype(np.float32)

    def fresh():
        model = fl.Sequential([fl.layers.LSTM(4, input_shape=(5, 3)), fl.layers.Dense(1)],
                              seed=7)
        opt = fl.optim.KerasSGD(momentum=0.9) if optimizer == "sgd" else optimizer
        model.compile(optimizer=opt, loss="mse")
        return model

    straight = fresh()
    straight.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    first = fresh()
    first.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    first.save(tmp_path / "ckpt.safetensors")
    resumed = fl.load_model(tmp_path / "ckpt.safetensors")
    assert resumed.optimizer.iterations == 3
    resumed.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    for (_, a), (_, b) in zip(sorted(straight.optimizer.state_dict().items()),
                              sorted(resumed.optimizer.state_dict().items())):
        np.testing.assert_array_equal(a, b)
    # fl.load reads the same file the same way
    again = fl.load(tmp_path / "ckpt.safetensors")
    assert again.optimizer.iterations == 3


def test_save_of_an_untrained_or_uncompiled_model_has_no_optimizer_state(tmp_path):
    model = fl.Sequential([fl.layers.Dense(1, input_shape=(2,))], seed=0)
    model.save(tmp_path / "a.safetensors")
    assert not any(k.startswith("optimizer.") for k in
                   fl.io.read_safetensors(tmp_path / "a.safetensors"))
    loaded = fl.load_model(tmp_path / "a.safetensors")
    assert loaded.optimizer is None


def test_load_model_refuses_other_models_and_bad_optimizer_state(tmp_path):
    fl.save(fl.LSTM(2, 3), tmp_path / "lstm.safetensors")
    with pytest.raises(ValueError, match="load_model expects a Sequential"):
        fl.load_model(tmp_path / "lstm.safetensors")
    model = fl.Sequential([fl.layers.Dense(1, input_shape=(2,))], seed=0)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 2)), np.ones(4), verbose=0)
    state = model.checkpoint_state_dict()
    state["optimizer.0.m"] = np.zeros((3, 3), np.float32)
    fl.save(model, tmp_path / "m.safetensors")
    metadata = fl.io.read_metadata(tmp_path / "m.safetensors")
    fl.io.write_safetensors(state, tmp_path / "bad.safetensors", metadata)
    with pytest.raises(ValueError, match=r"state\['0\.m'\]: expected a float array of shape"):
        fl.load_model(tmp_path / "bad.safetensors")


def test_optimizer_state_dict_roundtrip_is_atomic():
    layer = fl.Linear(2, 2)
    opt = fl.optim.KerasAdam(layer)
    layer.grads["weight"][...] = 1.0
    opt.step()
    state = opt.state_dict()
    assert int(state["iterations"]) == 1 and set(state) == {"iterations", "0.m", "0.v",
                                                           "1.m", "1.v"}
    other = fl.optim.KerasAdam(layer)
    with pytest.raises(ValueError, match="unexpected entry 'x.m'"):
        other.load_state_dict({**state, "x.m": state["0.m"]})
    assert other.iterations == 0 and other.state == [{}, {}]
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.state[0]["m"], opt.state[0]["m"])


def test_nan_targets_are_refused_up_front():
    model = fl.Sequential([fl.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer="sgd", loss="mse")
    y = np.ones(5)
    y[3] = np.nan
    with pytest.raises(ValueError, match=r"y: the targets must be finite.*sample 3"):
        model.fit(np.ones((5, 2)), y, verbose=0)


def test_nan_loss_stops_training_with_a_warning():
    model = fl.Sequential([fl.layers.Dense(1, input_shape=(2,))], seed=0)
    model.compile(optimizer=fl.optim.KerasSGD(learning_rate=1e30), loss="mse")
    x = np.full((8, 2), 1e10)
    with pytest.warns(RuntimeWarning, match=r"epoch 1, batch \d+: the loss is (nan|inf)"):
        history = model.fit(x, np.ones(8), epochs=5, batch_size=2, verbose=0)
    assert len(history.history["loss"]) == 1


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_loaded_models_are_in_train_mode(tmp_path, mode):
    """The mode is not part of a saved model (PyTorch's habit): fl.load gives a model in
    train mode, as a new one is, whatever mode it was saved in."""
    seq = fl.Sequential([fl.layers.LSTM(2, input_shape=(3, 1)), fl.layers.Dropout(0.5),
                         fl.layers.Dense(1)], seed=0)
    lstm = fl.LSTM(1, 2)
    for model, name in ((seq, "seq"), (lstm, "lstm")):
        getattr(model, mode)()
        fl.save(model, tmp_path / f"{name}.safetensors")
        loaded = fl.load(tmp_path / f"{name}.safetensors")
        assert loaded.training
        children = [child for _, child in loaded.named_children()]
        assert all(child.training for child in children)
