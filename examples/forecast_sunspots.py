"""Forecast yearly sunspot numbers with a Keras-style LSTM, against a persistence baseline.

Data: the yearly sunspot activity 1700-2008 shipped inside statsmodels
(``statsmodels.api.datasets.sunspots``, no download). The model reads the last ``window``
years and predicts the next one; it is trained on the years before the held-out tail and
evaluated one step ahead on the tail (each forecast sees the true history, as the baseline
does). The persistence baseline predicts that next year equals this year. Both mean
squared errors are printed, in squared sunspot numbers, and a PNG is saved with two
panels: the forecasts against the truth, and the learning curves (``History``: the
training loss and the held-out loss per epoch; the held-out years are passed as
``validation_data``, so they are only evaluated, never trained on).

Run: ``python examples/forecast_sunspots.py [plot.png]`` (a few seconds; needs statsmodels
and matplotlib). Without a path the PNG goes to the temporary directory
(``fastlstm-examples/sunspots_forecast.png`` there), not the working directory. It runs on
fastlstm's default threads.
"""
import os
import sys
import tempfile
import time

import numpy as np

import fastlstm as fl


def load_sunspots():
    """(years, activity) as float arrays, 1700-2008."""
    import statsmodels.api as sm
    data = sm.datasets.sunspots.load_pandas().data
    return data["YEAR"].to_numpy(float), data["SUNACTIVITY"].to_numpy(float)


def windows(series, window):
    """Inputs (n, window, 1): each run of ``window`` values; targets (n,): the value after."""
    x = np.lib.stride_tricks.sliding_window_view(series[:-1], window)
    return x[:, :, None].astype(np.float32), series[window:].astype(np.float32)


def save_plot(path, years, truth, forecast, persistence, history):
    """Forecast vs truth (and the baseline) over the held-out years, and the learning
    curves of ``history`` (a ``History.history`` dict), side by side in one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(12, 4))
    FigureCanvasAgg(figure)
    forecasts, curves = figure.subplots(1, 2, width_ratios=(2, 1))
    forecasts.plot(years, truth, "k.-", label="observed")
    forecasts.plot(years, forecast, "C0-", label="LSTM, one year ahead")
    forecasts.plot(years, persistence, "C1--", label="persistence (last year)")
    forecasts.set_xlabel("year")
    forecasts.set_ylabel("sunspot activity")
    forecasts.set_title("Yearly sunspots: held-out forecasts")
    forecasts.legend()
    epochs = range(1, len(history["loss"]) + 1)
    curves.plot(epochs, history["loss"], "C0-", label="training loss")
    curves.plot(epochs, history["val_loss"], "C3-", label="held-out loss (validation_data)")
    curves.set_yscale("log")
    curves.set_xlabel("epoch")
    curves.set_ylabel("MSE of the scaled series")
    curves.set_title("Learning curves (History)")
    curves.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def default_plot_path():
    """``<temporary directory>/fastlstm-examples/sunspots_forecast.png`` (directory created)."""
    directory = os.path.join(tempfile.gettempdir(), "fastlstm-examples")
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, "sunspots_forecast.png")


def main(plot_path=None, epochs=40, window=20, hidden_size=32, test_years=40, seed=0,
         verbose=0):
    """Train, forecast the last ``test_years`` years, save the plot (``plot_path`` None:
    :func:`default_plot_path`); returns the figures."""
    plot_path = default_plot_path() if plot_path is None else plot_path
    years, activity = load_sunspots()
    split = len(activity) - test_years             # first held-out year's index
    train = activity[:split]
    mean, std = train.mean(), train.std()
    scaled = (activity - mean) / std

    x_train, y_train = windows(scaled[:split], window)
    # test inputs: the windows ending just before each held-out year (they reach back
    # into the training years, as a forecaster's history would)
    x_test, y_test = windows(scaled[split - window:], window)
    truth = activity[split:]

    model = fl.Sequential([fl.layers.LSTM(hidden_size, input_shape=(window, 1)),
                           fl.layers.Dense(1)], seed=seed)
    model.compile(loss="mse", optimizer=fl.optim.Adam(lr=0.005))
    started = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=verbose,
                        validation_data=(x_test, y_test))
    seconds = time.perf_counter() - started
    forecast = model.predict(x_test).ravel() * std + mean
    persistence = activity[split - 1:-1]

    lstm_mse = float(np.mean((forecast - truth) ** 2))
    persistence_mse = float(np.mean((persistence - truth) ** 2))
    save_plot(plot_path, years[split:], truth, forecast, persistence, history.history)
    print(f"sunspots {int(years[split])}-{int(years[-1])} (held out), one year ahead: "
          f"LSTM MSE {lstm_mse:.1f} vs persistence MSE {persistence_mse:.1f} "
          f"({persistence_mse / lstm_mse:.2f}x lower); {len(x_train)} training windows, "
          f"{epochs} epochs in {seconds:.1f} s; plot: {plot_path}")
    return {"lstm_mse": lstm_mse, "persistence_mse": persistence_mse, "seconds": seconds,
            "final_train_loss": history.history["loss"][-1], "history": history.history,
            "plot_path": str(plot_path)}


if __name__ == "__main__":
    main(*sys.argv[1:2])
