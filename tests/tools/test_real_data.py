"""The real-data examples (data shipped with statsmodels and with Python itself) run end to
end with small settings and beat their baselines."""
import numpy as np
import pytest

from conftest import load_example, require

pytestmark = pytest.mark.slow


def test_sunspot_forecast_beats_persistence(tmp_path):
    require("statsmodels")
    require("matplotlib")
    plot = tmp_path / "sunspots.png"
    figures = load_example("forecast_sunspots").main(plot_path=plot, epochs=15)
    assert figures["lstm_mse"] < 0.5 * figures["persistence_mse"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_char_lm_beats_the_unigram_baseline():
    figures = load_example("char_lm").main(epochs=2, n_chars=120_000, hidden_size=64,
                                   sample_length=80)
    losses = figures["train_loss"]
    assert losses[1] < losses[0]
    assert figures["perplexity"] < 0.75 * figures["unigram_perplexity"]
    assert figures["sample"].startswith("The ") and len(figures["sample"]) == 84
    assert np.isfinite(figures["perplexity"]) and figures["vocabulary_size"] > 60
