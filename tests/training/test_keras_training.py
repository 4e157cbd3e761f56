"""Sequential trains as Keras 3 itself does: same weights, same data, shuffle=False,
3 epochs of SGD / Adam / RMSprop with an LSTM -> Dense model (float32), Keras on its
PyTorch backend."""
import os

import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, require


def keras_module():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = require("keras")
    if keras.backend.backend() != "torch":
        pytest.fail(f"keras was imported with the {keras.backend.backend()!r} backend; run "
                    f"with KERAS_BACKEND=torch")
    return keras


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop", "adamw"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_fit_matches_keras(optimizer, return_sequences):
    keras = keras_module()
    rng = np.random.default_rng(0)
    n, T, features, H = 48, 6, 3, 5
    x = rng.standard_normal((n, T, features)).astype(np.float32)
    y_shape = (n, T, 1) if return_sequences else (n, 1)
    y = (0.5 * rng.standard_normal(y_shape)).astype(np.float32)

    keras.utils.set_random_seed(0)
    theirs = keras.Sequential([keras.Input((T, features)),
                               keras.layers.LSTM(H, return_sequences=return_sequences),
                               keras.layers.Dense(1)])
    ours = fl.Sequential([fl.layers.LSTM(H, return_sequences=return_sequences,
                                         input_shape=(T, features)),
                          fl.layers.Dense(1)], seed=0)
    weights = [w.astype(np.float32) for w in theirs.get_weights()]
    weights[2] = (weights[2] + rng.uniform(-0.5, 0.5, weights[2].shape)).astype(np.float32)
    theirs.set_weights(weights)    # a bias away from Keras' init: its update is checked
    ours.set_weights(weights)
    assert_close("forward before training", ours.predict(x), theirs.predict(x, verbose=0),
                 1e-6)

    theirs.compile(optimizer=optimizer, loss="mse")
    ours.compile(optimizer=optimizer, loss="mse")
    their_history = theirs.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    our_history = ours.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)

    assert_close(f"{optimizer} epoch losses", our_history.history["loss"],
                 their_history.history["loss"], 1e-5)
    assert_close(f"{optimizer} predictions after training", ours.predict(x),
                 theirs.predict(x, verbose=0), 1e-5)
    for ours_w, theirs_w, start in zip(ours.get_weights(), theirs.get_weights(), weights):
        assert_close(f"{optimizer} weights after training", ours_w, theirs_w, 1e-5)
        assert not np.allclose(ours_w, start)   # every weight, the bias included, moved


@pytest.mark.parametrize("kwargs", [dict(patience=2, cooldown=2, min_lr=0.2, factor=0.5),
                                    dict(patience=0, min_delta=0.05),
                                    dict(patience=1, cooldown=1, mode="max", factor=0.3),
                                    dict(patience=3, cooldown=0, min_delta=0.0)])
def test_reduce_lr_on_plateau_callback_matches_keras(kwargs):
    """The one ReduceLROnPlateau, used as a fit callback, follows Keras' own callback."""
    keras = keras_module()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    theirs = keras.callbacks.ReduceLROnPlateau(monitor="loss", **kwargs)
    theirs.set_model(model)
    ours = fl.callbacks.ReduceLROnPlateau(monitor="loss", **kwargs)
    ours.set_model(type("Model", (), {"optimizer": fl.optim.KerasSGD(learning_rate=1.0)})())
    assert fl.optim.ReduceLROnPlateau is fl.callbacks.ReduceLROnPlateau
    theirs.on_train_begin()
    ours.on_train_begin()
    values = [5, 4, 4, 4.01, 3.9, 3.95, 3.95, 3.95, 4, 1, 1, 1, 1, 1, 0.99, 0.98, 0.98] * 2
    their_lrs, our_lrs = [], []
    for epoch, value in enumerate(values):
        theirs.on_epoch_end(epoch, {"loss": value})
        ours.on_epoch_end(epoch, {"loss": value})
        their_lrs.append(float(model.optimizer.learning_rate))
        our_lrs.append(ours.model.optimizer.lr)
    assert our_lrs == pytest.approx(their_lrs, rel=1e-6)
    assert min(our_lrs) < 1.0
