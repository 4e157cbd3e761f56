"""The examples run end to end with small sizes and learn or measure something; the README's
Python snippets run as written."""
import math
import re
from pathlib import Path

import numpy as np
from conftest import load_example, require

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_keras_regression_beats_the_mean():
    figures = load_example("keras_regression").main(epochs=2, n_train=400, n_test=100, verbose=0)
    losses = figures["history"]["loss"]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert figures["test_mse"] < 0.5 * figures["baseline_mse"]


def test_keras_sequence_tagging_trains():
    figures = load_example("keras_sequence_tagging").main(epochs=2, n_train=256, n_test=64,
                                                          verbose=0)
    history = figures["history"]
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history["loss"][1] < history["loss"][0]
    assert math.isfinite(figures["test_loss"]) and 0.0 <= figures["test_accuracy"] <= 1.0


def test_pytorch_style_training_trains(capsys):
    figures = load_example("pytorch_style_training").main(epochs=2, n_train=256, n_test=96)
    assert figures["losses"][1] < figures["losses"][0]
    assert figures["test_accuracy"] > 1 / 3
    assert "(lstm): LSTM(1, 64, num_layers=2, batch_first=True" in capsys.readouterr().out


def test_model_exchange_agrees_across_pytorch_fastlstm_and_onnxruntime(tmp_path, capsys):
    require("torch")
    require("onnx")
    require("onnxruntime")
    onnx_path = tmp_path / "exchange.onnx"
    figures = load_example("model_exchange").main(onnx_path=str(onnx_path), hidden_size=8,
                                                  updates=40, n_train=64, n_test=5, steps=7)
    print(capsys.readouterr().out)
    for runtime in ("fastlstm", "onnxruntime"):
        assert 0 <= figures[f"{runtime}_max_difference"] < 2e-5
        assert 0 <= figures[f"{runtime}_forecast_difference"] < 2e-5
    assert figures["last_loss"] < figures["first_loss"]
    assert onnx_path.stat().st_size > 0


def test_streaming_latency_streams_what_the_whole_sequence_gives(capsys):
    figures = load_example("streaming_latency").main(input_size=3, hidden_size=5, num_layers=2,
                                                     steps=40, window=8, window_calls=5)
    out = capsys.readouterr().out
    print(out)
    assert figures["max_difference"] < 2e-5
    for timings in (figures["step_us"], figures["window_us"]):
        assert 0 < timings["median"] <= timings["p90"] <= timings["p99"] <= timings["max"]
    assert "stream.step" in out and "m(x), last 8 samples" in out


def test_sunspot_forecast_plots_its_learning_curves(tmp_path, monkeypatch):
    require("statsmodels")
    require("matplotlib")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(tmp_path)
    figures = load_example("forecast_sunspots").main(epochs=3, hidden_size=8)
    history = figures["history"]
    assert len(history["loss"]) == len(history["val_loss"]) == 3
    assert all(math.isfinite(v) for v in history["loss"] + history["val_loss"])
    # by default the PNG goes to the temporary directory, not the working directory
    plot = tmp_path / "tmp" / "fastlstm-examples" / "sunspots_forecast.png"
    assert figures["plot_path"] == str(plot) and plot.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


def readme_snippets():
    """The ```python blocks of README.md, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch, capsys):
    require("torch")        # the PyTorch snippet; the others need NumPy and SciPy only
    snippets = readme_snippets()
    assert len(snippets) == 3
    monkeypatch.chdir(tmp_path)
    namespaces = []
    for snippet in snippets:
        namespaces.append({"__name__": "readme"})
        exec(compile(snippet, "README.md", "exec"), namespaces[-1])
    print(capsys.readouterr().out)
    first, pytorch, keras = namespaces
    # the first snippet needs no PyTorch: it saves, loads, runs and streams a model
    assert "torch" not in snippets[0] and (tmp_path / "lstm.safetensors").exists()
    assert not first["m"].training and first["h_t"].shape == (128,)
    assert np.abs(first["h_t"] - first["out"][0, -1]).max() < 2e-5
    assert pytorch["m"].grads["weight_hh_l0"].shape == (512, 128)
    history = keras["history"].history
    assert len(history["loss"]) == 10 and history["loss"][-1] < history["loss"][0]
    assert keras["model"].predict(keras["x"][:4]).shape == (4, 1)


def test_examples_readme_lists_every_example():
    listed = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert scripts and all(f"`{name}`" in listed for name in scripts)
    assert not re.search(r"seed_[abc]", listed)
    assert np.all([f"python examples/{name}" in listed for name in scripts])
