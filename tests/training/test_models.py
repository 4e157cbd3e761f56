"""Sequential: compile/fit/evaluate/predict, fused softmax, callbacks, progress, save/load."""
import json
import types

import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, central_differences, report, require

L = fl.layers


def regression_data(n=64, T=5, features=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, features)).astype(np.float32)
    return x, (x[:, :, 0].mean(axis=1, keepdims=True) * 2).astype(np.float32)


def classification_data(n=60, T=6, vocab=8, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, (n, T))
    return x, x[:, -1] % classes  # the class is readable from the last token


def regression_model(seed=0, **dense):
    return fl.Sequential([L.LSTM(8, input_shape=(5, 2)), L.Dense(1, **dense)], seed=seed)


def test_fit_evaluate_predict_regression():
    x, y = regression_data()
    model = regression_model()
    model.compile(loss="mse", optimizer=fl.optim.Adam(lr=0.02), metrics=["mae"])
    history = model.fit(x, y, epochs=8, batch_size=16, validation_split=0.25, verbose=0)
    h = history.history
    assert set(h) == {"loss", "mae", "val_loss", "val_mae"} and len(h["loss"]) == 8
    assert history.epoch == list(range(8)) and model.history is history
    report("fit: first vs last training loss", h["loss"][-1], h["loss"][0])
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    loss, mae = model.evaluate(x[48:], y[48:])  # validation_split holds out the last 25%
    assert_close("val_loss of the last epoch == evaluate on the held-out tail", loss,
                 h["val_loss"][-1], 1e-6)
    assert_close("val_mae == evaluate", mae, h["val_mae"][-1], 1e-6)
    assert model.training  # fit leaves the mode as it found it
    predictions = model.predict(x, batch_size=7)
    assert predictions.shape == (64, 1) and predictions.dtype == np.float32
    assert_close("predict in batches == predict at once", predictions,
                 model.predict(x, batch_size=64), 1e-6)
    model.compile(loss="mse", optimizer="sgd")
    loss = model.evaluate(x, y, batch_size=10)
    assert isinstance(loss, float)
    assert_close("evaluate without metrics is the mse of predict", loss,
                 np.mean((predictions - y) ** 2), 1e-5)


@pytest.mark.parametrize("input_shape", [None, (5, 2)])
def test_seeded_models_train_identically(input_shape):
    x, y = regression_data()
    histories = []
    for _ in range(2):
        model = fl.Sequential([L.LSTM(8, dropout=0.2, input_shape=input_shape), L.Dropout(0.3),
                               L.Dense(1)], seed=7)
        model.compile(loss="mae", optimizer="rmsprop")
        histories.append(model.fit(x, y, epochs=2, batch_size=16, verbose=0).history["loss"])
    assert histories[0] == histories[1]


def test_fused_softmax_crossentropy_equals_logits_training():
    """Dense(softmax) + cross-entropy trains exactly like Dense(linear) + from_logits loss."""
    x, y = classification_data()
    runs = []
    for activation, loss in (("softmax", "sparse_categorical_crossentropy"),
                             (None, fl.losses.SparseCategoricalCrossentropy(from_logits=True))):
        model = fl.Sequential([L.Embedding(8, 4), L.LSTM(6), L.Dense(3, activation=activation)],
                              seed=3)
        model.compile(loss=loss, optimizer=fl.optim.Adam(lr=0.01))
        history = model.fit(x, y, epochs=2, batch_size=20, shuffle=False, verbose=0)
        runs.append((history.history["loss"], model.state_dict()))
    assert_close("fused vs from_logits: losses", runs[0][0], runs[1][0], 1e-6)
    for name, value in runs[0][1].items():
        assert_close(f"fused vs from_logits: {name}", value, runs[1][1][name], 1e-6)


def test_sequential_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    model = fl.Sequential([L.Embedding(6, 3, dtype="float64"),
                           L.Bidirectional(L.LSTM(4, return_sequences=True, dtype="float64")),
                           L.LSTM(3, dtype="float64"), L.Dense(2, activation="sigmoid",
                                                                dtype="float64")], seed=4)
    tokens = rng.integers(0, 6, (3, 5))
    target = rng.integers(0, 2, (3, 2)).astype(float)
    loss = fl.losses.BinaryCrossentropy()
    _, grad = loss(target, model(tokens))
    model.backward(grad)
    for name in ("1.layer.recurrent_kernel_reverse", "2.bias", "3.kernel",
                 "0.embeddings"):
        array = dict(model.named_parameters())[name]

        def objective(values, array=array):
            saved = array.copy()
            array[...] = values
            value = loss.value(target, model.eval()(tokens))
            array[...] = saved
            model.train()
            return value

        assert_close(f"Sequential d{name}", model.grads[name],
                     central_differences(objective, array.copy()), 1e-7)


def test_classification_learns_and_reports_accuracy():
    x, y = classification_data(n=90)
    model = fl.Sequential([L.Embedding(8, 8), L.LSTM(16), L.Dense(3, activation="softmax")],
                          seed=5)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=fl.optim.Adam(lr=0.03),
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=12, batch_size=15, verbose=0)
    loss, accuracy = model.evaluate(x, y)
    print(f"classification: accuracy {accuracy:.3f}, loss {loss:.3f}")
    assert history.history["accuracy"][-1] > 0.8 and accuracy > 0.8
    assert np.mean(model.predict(x).argmax(-1) == y) == pytest.approx(accuracy)
    x_onehot = np.eye(3)[y]
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["acc"])
    assert model.evaluate(x, x_onehot)[1] == pytest.approx(accuracy)


def test_save_and_load_whole_model(tmp_path):
    x, y = classification_data()
    model = fl.Sequential([L.Embedding(8, 4), L.Bidirectional(L.LSTM(5), merge_mode="sum"),
                           L.Dropout(0.2), L.Dense(3, activation="softmax")], seed=6)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=fl.optim.SGD(lr=0.1),
                  metrics=["accuracy", "perplexity"])
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = fl.load(path)
    assert isinstance(loaded, fl.Sequential) and loaded.get_config() == model.get_config()
    assert_close("loaded model predictions", loaded.predict(x), model.predict(x), 0)
    assert loaded.evaluate(x, y) == model.evaluate(x, y)  # compiled from the saved config
    assert isinstance(loaded.optimizer, fl.optim.SGD) and loaded.optimizer.lr == 0.1
    weights = model.get_weights()
    fresh = fl.Sequential.from_config(model.get_config())
    fresh.set_weights(weights)
    assert_close("set_weights(get_weights())", fresh.predict(x), model.predict(x), 0)


def test_summary_and_names(capsys):
    model = fl.Sequential([L.LSTM(4, return_sequences=True, input_shape=(7, 3)), L.LSTM(4),
                           L.Dense(2)])
    assert [layer.name for layer in model.layers] == ["lstm", "lstm_1", "dense"]
    model.summary()
    text = capsys.readouterr().out
    assert "lstm_1 (LSTM)" in text and "(None, 7, 4)" in text and "(None, 2)" in text
    assert f"Total params: {model.num_parameters():,}" in text
    assert [name for name, _ in model.named_parameters()][:3] == [
        "0.kernel", "0.recurrent_kernel", "0.bias"]   # Keras' names, one bias
    assert model.layers[0].count_params() == 4 * (4 * (3 + 4) + 4)   # Keras' count
    unbuilt = fl.Sequential([L.Dense(2)])
    unbuilt.summary()
    assert "not built" in capsys.readouterr().out


def test_verbose_modes(capsys, monkeypatch):
    x, y = regression_data(n=32)
    model = regression_model()
    model.compile(loss="mse", optimizer="adam", metrics=["mae"])
    model.fit(x, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    model.fit(x, y, epochs=2, verbose=1, validation_split=0.25)  # stdout is not a terminal
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Epoch 1/2 - ") and "val_mae: " in lines[0]
    require("tqdm")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    model.fit(x, y, epochs=1, verbose=1, batch_size=8)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "4/4" in out and "loss=" in out and "mae=" in out


class Recorder(fl.callbacks.Callback):
    """Keeps each epoch's logs, weights and learning rate."""

    def on_train_begin(self, logs=None):
        self.logs, self.weights, self.lrs, self.batches = [], [], [], 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))
        self.weights.append(self.model.state_dict())
        self.lrs.append(self.model.optimizer.lr)


def test_early_stopping_restores_the_best_weights():
    x, y = regression_data()
    model = regression_model()
    model.compile(loss="mse", optimizer=fl.optim.SGD(lr=0.05))
    recorder = Recorder()
    # the learning rate explodes after epoch 2, so the validation loss gets worse
    blow_up = fl.callbacks.LearningRateScheduler(lambda epoch, lr: 0.05 if epoch < 3 else 20.0)
    stopper = fl.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    history = model.fit(x, y, epochs=30, batch_size=16, validation_split=0.25, verbose=0,
                        callbacks=[blow_up, recorder, stopper])
    val = [logs["val_loss"] for logs in recorder.logs]
    best = int(np.nanargmin(val))
    print(f"early stopping: val_loss {np.round(val, 4).tolist()}, best epoch {best}, "
          f"stopped at {stopper.stopped_epoch}")
    assert len(history.epoch) < 30 and stopper.stopped_epoch == len(val) - 1
    assert stopper.best_epoch == best
    for name, value in recorder.weights[best].items():
        assert_close(f"restored {name}", model.state_dict()[name], value, 0)
    assert recorder.batches == len(val) * 3


def test_model_checkpoint_and_schedules(tmp_path):
    x, y = regression_data()
    model = regression_model()
    opt = fl.optim.Adam(lr=0.04)
    model.compile(loss="mse", optimizer=opt)
    recorder = Recorder()
    checkpoint = fl.callbacks.ModelCheckpoint(str(tmp_path / "best.safetensors"),
                                              save_best_only=True)
    every = fl.callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{loss:.2f}.safetensors"),
                                         monitor="loss")
    model.fit(x, y, epochs=4, validation_split=0.25, verbose=0,
              callbacks=[fl.callbacks.LearningRateScheduler(fl.optim.StepLR(opt, 2, gamma=0.5)),
                         recorder, checkpoint, every])
    assert recorder.lrs == [0.04, 0.04, 0.02, 0.02]
    assert len(list(tmp_path.glob("m-0*-*.safetensors"))) == 4
    best = int(np.argmin([logs["val_loss"] for logs in recorder.logs]))
    restored = fl.load(tmp_path / "best.safetensors")
    for name, value in recorder.weights[best].items():
        assert_close(f"checkpoint of the best epoch: {name}", restored.state_dict()[name], value, 0)


def test_reduce_lr_on_plateau_callback_keras_semantics():
    opt = fl.optim.SGD(lr=1.0)
    callback = fl.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=2,
                                              min_lr=0.2)
    callback.set_model(types.SimpleNamespace(optimizer=opt))
    callback.on_train_begin()
    lrs = []
    for epoch, loss in enumerate([3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]):
        callback.on_epoch_end(epoch, {"loss": loss})
        lrs.append(opt.lr)
    assert lrs == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2]


def test_misuse_raises_clear_errors():
    x, y = regression_data(n=8)
    model = regression_model()
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(x, y)
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="adam")
    model.compile(loss="mse", optimizer="adam")
    with pytest.raises(ValueError, match=r"same non-zero number.*\(8, 5, 2\) and \(7, 1\)"):
        model.fit(x, y[:7])
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(x, y, validation_split=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(x, y, batch_size=0)
    with pytest.raises(ValueError, match="monitor 'val_loss' is not in the epoch logs"):
        model.fit(x, y, verbose=0, callbacks=[fl.callbacks.EarlyStopping()])
    with pytest.raises(ValueError, match="return_state"):
        fl.Sequential([L.LSTM(3, return_state=True)])
    with pytest.raises(TypeError, match="fastlstm.layers layer"):
        fl.Sequential([fl.Linear(2, 2)])
    with pytest.raises(ValueError, match="names must be distinct"):
        model.compile(loss="mse", metrics=["mae", "mae"])
    used = fl.optim.Adam(fl.Linear(2, 2))
    model.compile(loss="mse", optimizer=used)
    with pytest.raises(ValueError, match="optimizer: already bound"):
        model.fit(x, y, verbose=0)


def test_train_on_batch_and_manual_calls():
    x, y = regression_data(n=16)
    model = regression_model()
    model.compile(loss="mse", optimizer=fl.optim.SGD(lr=0.1))
    losses = [model.train_on_batch(x, y) for _ in range(5)]
    assert losses[-1] < losses[0]
    out = model(x)  # a Module: train-mode call, then explicit backward
    dx = model.backward(np.ones_like(out))
    assert dx.shape == x.shape


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_awkward_sizes(dtype):
    """One sample, one step, one feature, one unit; float32 and float64 layers."""
    x, y = np.ones((1, 1, 1)), np.ones((1, 1))
    model = fl.Sequential([L.LSTM(1, dtype=dtype), L.Dense(1, dtype=dtype)], seed=0)
    model.compile(loss="mse", optimizer=fl.optim.SGD(lr=0.5), metrics=["mae"])
    history = model.fit(x, y, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.predict(x).dtype == np.dtype(dtype)
    wide = fl.Sequential([L.Bidirectional(L.LSTM(13, return_sequences=True)), L.Dense(3)],
                         seed=1)
    assert wide.predict(np.zeros((2, 7, 9))).shape == (2, 7, 3)


def test_files_saved_with_the_two_lstm_biases_still_load(tmp_path):
    """Older files name the wrapped fl.LSTM's parameters (bias_ih and bias_hh): their sum
    becomes the layer's single Keras bias."""
    model = fl.Sequential([L.LSTM(4, return_sequences=True, input_shape=(5, 3)),
                           L.Bidirectional(L.LSTM(3)), L.Dense(2)], seed=0)
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32)
                       for w in model.get_weights()])
    old_state = {}
    for prefix, suffixes in (("0.", [""]), ("1.layer.", ["", "_reverse"])):
        for suffix in suffixes:
            state = model.state_dict()
            split = rng.standard_normal(state[f"{prefix}bias{suffix}"].shape).astype(np.float32)
            old_state[f"{prefix}lstm.weight_ih_l0{suffix}"] = state[f"{prefix}kernel{suffix}"].T
            old_state[f"{prefix}lstm.weight_hh_l0{suffix}"] = \
                state[f"{prefix}recurrent_kernel{suffix}"].T
            old_state[f"{prefix}lstm.bias_ih_l0{suffix}"] = state[f"{prefix}bias{suffix}"] - split
            old_state[f"{prefix}lstm.bias_hh_l0{suffix}"] = split
    old_state.update({name: value for name, value in model.state_dict().items()
                      if name.startswith("2.")})
    path = tmp_path / "old.safetensors"
    fl.io.write_safetensors(old_state, path, metadata={
        "format": "fastlstm", "class": "Sequential", "version": "0.1.0",
        "config": json.dumps(model.get_config())})
    loaded = fl.load(path)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    assert_close("old file predictions", loaded.predict(x), model.predict(x), 1e-6)
    assert sorted(loaded.state_dict()) == sorted(model.state_dict())
    fl.save(loaded, tmp_path / "new.safetensors")
    assert_close("re-saved predictions", fl.load(tmp_path / "new.safetensors").predict(x),
                 loaded.predict(x), 0)
