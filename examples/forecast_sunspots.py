"""Forecast yearly sunspot numbers with a Keras-style LSTM, against a persistence baseline.

Data: the yearly sunspot activity 1700-2008 shipped inside statsmodels
(``statsmodels.api.datasets.sunspots``, no download). The model reads the last ``window``
years and predicts the next one; it is trained on the years before the held-out tail and
evaluated one step ahead on the tail (each forecast sees the true history, as the baseline
does). The persistence baseline predicts that next year equals this year. Both mean
squared errors are printed, in squared sunspot numbers, and a forecast-vs-truth plot is
saved as a PNG.

Run: ``python examples/forecast_sunspots.py [plot.png]`` (a few seconds; needs statsmodels
and matplotlib). It runs on fastlstm's default threads.
"""
import sys
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


def save_plot(path, years, truth, forecast, persistence):
    """Forecast vs truth (and the baseline) over the held-out years, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(9, 4))
    axes.plot(years, truth, "k.-", label="observed")
    axes.plot(years, forecast, "C0-", label="LSTM, one year ahead")
    axes.plot(years, persistence, "C1--", label="persistence (last year)")
    axes.set_xlabel("year")
    axes.set_ylabel("sunspot activity")
    axes.set_title("Yearly sunspots: held-out forecasts")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(plot_path="sunspots_forecast.png", epochs=40, window=20, hidden_size=32,
         test_years=40, seed=0, verbose=0):
    """Train, forecast the last ``test_years`` years, save the plot; returns the figures."""
    years, activity = load_sunspots()
    split = len(activity) - test_years             # first held-out year's index
    train = activity[:split]
    mean, std = train.mean(), train.std()
    scaled = (activity - mean) / std

    x_train, y_train = windows(scaled[:split], window)
    # test inputs: the windows ending just before each held-out year (they reach back
    # into the training years, as a forecaster's history would)
    x_test, _ = windows(scaled[split - window:], window)
    truth = activity[split:]

    model = fl.Sequential([fl.layers.LSTM(hidden_size, input_shape=(window, 1)),
                           fl.layers.Dense(1)], seed=seed)
    model.compile(loss="mse", optimizer=fl.optim.Adam(lr=0.005))
    started = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=verbose)
    seconds = time.perf_counter() - started
    forecast = model.predict(x_test).ravel() * std + mean
    persistence = activity[split - 1:-1]

    lstm_mse = float(np.mean((forecast - truth) ** 2))
    persistence_mse = float(np.mean((persistence - truth) ** 2))
    save_plot(plot_path, years[split:], truth, forecast, persistence)
    print(f"sunspots {int(years[split])}-{int(years[-1])} (held out), one year ahead: "
          f"LSTM MSE {lstm_mse:.1f} vs persistence MSE {persistence_mse:.1f} "
          f"({persistence_mse / lstm_mse:.2f}x lower); {len(x_train)} training windows, "
          f"{epochs} epochs in {seconds:.1f} s; plot: {plot_path}")
    return {"lstm_mse": lstm_mse, "persistence_mse": persistence_mse, "seconds": seconds,
            "final_train_loss": history.history["loss"][-1], "plot_path": str(plot_path)}


if __name__ == "__main__":
    main(*sys.argv[1:2])
