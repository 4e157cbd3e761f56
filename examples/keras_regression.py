"""A Keras-style LSTM regressor: Sequential, compile, fit, evaluate.

``Sequential`` + ``LSTM(128, input_shape=(10, 32))`` + ``Dense(1)``, compiled with the mean
squared error and Adam, fitted, then evaluated on held-out data. The target is a noisy
function of the whole sequence (a decayed sum of a projection of the inputs), so the
model must remember earlier steps. The baseline is the variance of the test targets (the
mean squared error of always predicting their mean).

Run: ``python examples/keras_regression.py`` (about 5 s on 2 cores).
"""
import time

import numpy as np

import fastlstm as fl

TIMESTEPS, FEATURES = 10, 32


def make_data(n, rng):
    """x (n, 10, 32) float32; y (n, 1): a decayed sum over time of a fixed projection."""
    x = rng.standard_normal((n, TIMESTEPS, FEATURES)).astype(np.float32)
    projection = np.random.default_rng(0).standard_normal(FEATURES) / np.sqrt(FEATURES)
    decay = 0.8 ** np.arange(TIMESTEPS)[::-1]          # recent steps weigh most
    y = (x @ projection) @ decay / np.sqrt(np.sum(decay ** 2))
    y += 0.1 * rng.standard_normal(n)
    return x, y.reshape(-1, 1).astype(np.float32)


def main(epochs=10, n_train=2000, n_test=500, seed=0, verbose=1):
    """Train and evaluate; returns the figures it prints."""
    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(n_train, rng)
    x_test, y_test = make_data(n_test, rng)

    model = fl.Sequential(seed=seed)
    model.add(fl.layers.LSTM(128, input_shape=(TIMESTEPS, FEATURES)))
    model.add(fl.layers.Dense(1))
    model.compile(loss="mse", optimizer="adam")
    if verbose:
        model.summary()

    started = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=32, validation_split=0.1,
                        verbose=verbose)
    seconds = time.perf_counter() - started
    test_mse = model.evaluate(x_test, y_test)
    baseline = float(np.var(y_test))
    print(f"test MSE {test_mse:.4f} vs predict-the-mean baseline {baseline:.4f} "
          f"({epochs} epochs in {seconds:.1f} s)")
    return {"test_mse": test_mse, "baseline_mse": baseline, "history": history.history,
            "seconds": seconds}


if __name__ == "__main__":
    main()
