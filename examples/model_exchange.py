"""Model exchange: PyTorch-trained weights -> fastlstm -> ONNX -> ONNX Runtime.

A ``torch.nn.LSTM`` with a ``torch.nn.Linear`` head is trained in PyTorch to predict the
next value of noisy sine waves. Its LSTM then moves to fastlstm (``fl.LSTM.from_torch``:
same parameter names and shapes, no conversion), and from fastlstm to an ONNX file
(``m.to_onnx``) that ONNX Runtime runs. The head's two arrays are applied in NumPy. All
three runtimes get the same held-out batch; the script prints the largest difference of
each against PyTorch, for the LSTM outputs, the final states and the forecasts (float32
rounding: about 1e-6), and the forecast error of the trained model.

Run: ``python examples/model_exchange.py [model.onnx]`` (a few seconds; needs torch, onnx
and onnxruntime). Without a path the ONNX file goes to a temporary directory.
"""
import os
import sys
import tempfile
import time

import numpy as np

import fastlstm as fl


def make_data(n, steps, rng):
    """x (n, steps, 1) noisy sines of random frequency and phase; y (n, 1) the next value."""
    t = np.arange(steps + 1)
    frequency = rng.uniform(0.02, 0.1, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    waves = np.sin(2 * np.pi * frequency * t + phase) + 0.05 * rng.standard_normal((n, steps + 1))
    waves = waves.astype(np.float32)
    return waves[:, :-1, None], waves[:, -1:]


def train_in_pytorch(x, y, hidden_size, updates, batch_size, seed):
    """An nn.LSTM(batch_first=True) + nn.Linear on the last step, trained with Adam."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)    # a model this small trains fastest on one thread
    lstm = torch.nn.LSTM(1, hidden_size, batch_first=True)
    head = torch.nn.Linear(hidden_size, 1)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=1e-2)
    x_torch, y_torch = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(updates):
        rows = torch.from_numpy(rng.integers(0, len(x), batch_size))
        out, _ = lstm(x_torch[rows])
        loss = torch.nn.functional.mse_loss(head(out[:, -1]), y_torch[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return lstm.eval(), head.eval(), losses


def max_difference(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def main(onnx_path=None, hidden_size=32, updates=300, n_train=512, n_test=64, steps=40,
         batch_size=32, seed=0):
    """Train in PyTorch, move to fastlstm and ONNX Runtime, compare; returns the figures."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(n_train, steps, rng)
    x_test, y_test = make_data(n_test, steps, rng)
    started = time.perf_counter()
    lstm, head, losses = train_in_pytorch(x_train, y_train, hidden_size, updates, batch_size,
                                          seed)
    seconds = time.perf_counter() - started
    weight = head.weight.detach().numpy()             # (1, H)
    bias = head.bias.detach().numpy()                 # (1,)

    with torch.no_grad():                             # PyTorch: the reference
        out_t, (h_t, c_t) = lstm(torch.from_numpy(x_test))
        torch_results = [out_t.numpy(), h_t.numpy(), c_t.numpy()]

    m = fl.LSTM.from_torch(lstm)                      # fastlstm: same names and shapes
    out, (h_n, c_n) = m(x_test)
    fl_results = [out, h_n, c_n]

    with tempfile.TemporaryDirectory() as tmp:        # ONNX Runtime, from fastlstm's export
        path = onnx_path or os.path.join(tmp, "lstm.onnx")
        m.to_onnx(path)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ort_results = session.run(["out", "h_n", "c_n"], {"x": x_test})

    figures = {"seconds": seconds, "first_loss": losses[0], "last_loss": losses[-1]}
    forecasts = {}
    for name, (out, h_n, c_n) in (("pytorch", torch_results), ("fastlstm", fl_results),
                                  ("onnxruntime", ort_results)):
        forecasts[name] = out[:, -1] @ weight.T + bias
        if name != "pytorch":
            figures[f"{name}_max_difference"] = max(
                max_difference(a, b) for a, b in zip((out, h_n, c_n), torch_results))
            figures[f"{name}_forecast_difference"] = max_difference(forecasts[name],
                                                                    forecasts["pytorch"])
    figures["test_mse"] = float(np.mean((forecasts["onnxruntime"] - y_test) ** 2))
    figures["baseline_mse"] = float(np.mean((x_test[:, -1] - y_test) ** 2))   # last value

    print(f"PyTorch: {updates} Adam updates in {seconds:.1f} s, training MSE "
          f"{losses[0]:.4f} -> {losses[-1]:.4f}")
    for name in ("fastlstm", "onnxruntime"):
        print(f"{name:>11} vs PyTorch: max |difference| {figures[f'{name}_max_difference']:.1e} "
              f"(out, h_n, c_n), {figures[f'{name}_forecast_difference']:.1e} (forecasts)")
    print(f"held-out forecast MSE (ONNX Runtime) {figures['test_mse']:.4f} vs repeat-the-last-"
          f"value {figures['baseline_mse']:.4f}" + (f"; ONNX file: {onnx_path}" if onnx_path else ""))
    return figures


if __name__ == "__main__":
    main(*sys.argv[1:2])
