"""The real-data examples (data shipped with statsmodels and with Python itself) run end to
end with small settings and beat their baselines."""
import numpy as np
import pytest

from conftest import load_example, require

import fastlstm as fl
from fastlstm import _threads


@pytest.fixture
def one_thread(monkeypatch):
    """fastlstm's kernels on one thread (the fastest for these small settings); restored
    after."""
    monkeypatch.setattr(_threads, "_requested", _threads._requested)
    fl.set_num_threads(1)


def test_sunspot_forecast_beats_persistence(one_thread, tmp_path):
    require("statsmodels")
    require("matplotlib")
    plot = tmp_path / "sunspots.png"
    figures = load_example("forecast_sunspots").main(plot_path=plot, epochs=15)
    assert figures["lstm_mse"] < 0.5 * figures["persistence_mse"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_char_lm_beats_the_unigram_baseline(one_thread):
    figures = load_example("char_lm").main(epochs=2, n_chars=120_000, hidden_size=64,
                                   sample_length=80)
    losses = figures["train_loss"]
    assert losses[1] < losses[0]
    assert figures["perplexity"] < 0.75 * figures["unigram_perplexity"]
    assert figures["sample"].startswith("The ") and len(figures["sample"]) == 84
    assert np.isfinite(figures["perplexity"]) and figures["vocabulary_size"] > 60
