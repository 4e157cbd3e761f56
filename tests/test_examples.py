"""The seed examples run end to end with tiny epochs and learn something."""
import math

from conftest import load_example


def test_seed_a_regression_beats_the_mean():
    figures = load_example("seed_a_regression").main(epochs=2, n_train=400, n_test=100, verbose=0)
    losses = figures["history"]["loss"]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert figures["test_mse"] < 0.5 * figures["baseline_mse"]


def test_seed_b_classification_trains():
    figures = load_example("seed_b_classification").main(epochs=2, n_train=256, n_test=64, verbose=0)
    history = figures["history"]
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history["loss"][1] < history["loss"][0]
    assert math.isfinite(figures["test_loss"]) and 0.0 <= figures["test_accuracy"] <= 1.0


def test_seed_c_pytorch_style_trains(capsys):
    figures = load_example("seed_c_pytorch_style").main(epochs=2, n_train=256, n_test=96)
    assert figures["losses"][1] < figures["losses"][0]
    assert figures["test_accuracy"] > 1 / 3
    assert "(lstm): LSTM(1, 64, num_layers=2, batch_first=True" in capsys.readouterr().out
