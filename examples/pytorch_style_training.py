"""A PyTorch-style model and a hand-written training loop.

A ``fl.Module`` subclass holds ``fl.LSTM(..., batch_first=True)`` and ``fl.Linear`` on the
last step; its ``backward`` mirrors its ``forward`` (no autograd: each module returns the
gradient of its input). The loop is the PyTorch one: forward, loss, ``zero_grad``,
``backward``, gradient clipping, ``step``. The task: tell apart noisy sine waves of three
frequencies from 40 samples each.

Run: ``python examples/pytorch_style_training.py`` (about 5 s on 2 cores).
"""
import time

import numpy as np

import fastlstm as fl

STEPS, FREQUENCIES = 40, (0.05, 0.1, 0.2)


class SequenceClassifier(fl.Module):
    """x (B, T, input_size) -> class logits (B, num_classes), read from the last step."""

    def __init__(self, input_size, hidden_size, num_classes, num_layers=2, seed=0):
        self.lstm = fl.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                            seed=seed)
        self.fc = fl.Linear(hidden_size, num_classes, seed=seed + 1)

    def forward(self, x):
        out, _ = self.lstm(x)                    # (B, T, H)
        self._out_shape = out.shape
        return self.fc(out[:, -1, :])            # (B, num_classes)

    def backward(self, grad_logits):
        grad_last = self.fc.backward(grad_logits)
        grad_out = np.zeros(self._out_shape, dtype=grad_last.dtype)
        grad_out[:, -1, :] = grad_last           # only the last step fed the head
        self.lstm.backward(grad_out, input_grad=False)   # x is data: skip its gradient


def make_data(n, rng):
    """x (n, 40, 1) float32 noisy sines with random phase and amplitude; y (n,) classes."""
    y = rng.integers(0, len(FREQUENCIES), n)
    t = np.arange(STEPS)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amplitude = rng.uniform(0.5, 1.5, (n, 1))
    x = amplitude * np.sin(2 * np.pi * np.array(FREQUENCIES)[y][:, None] * t + phase)
    x += 0.3 * rng.standard_normal(x.shape)
    return x[:, :, None].astype(np.float32), y


def accuracy(model, x, y):
    model.eval()
    return float(np.mean(model(x).argmax(axis=1) == y))


def main(epochs=8, n_train=1200, n_test=300, batch_size=32, seed=0):
    """Train and evaluate; returns the figures it prints."""
    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(n_train, rng)
    x_test, y_test = make_data(n_test, rng)

    model = SequenceClassifier(input_size=1, hidden_size=64, num_classes=len(FREQUENCIES),
                               seed=seed)
    loss_fn = fl.losses.SparseCategoricalCrossentropy(from_logits=True)  # nn.CrossEntropyLoss
    optimizer = fl.optim.Adam(model.parameters(), lr=3e-3)
    print(model)

    started = time.perf_counter()
    losses = []
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(n_train)
        total = 0.0
        for start in range(0, n_train, batch_size):
            batch = order[start:start + batch_size]
            logits = model(x_train[batch])
            loss, grad_logits = loss_fn(y_train[batch], logits)
            optimizer.zero_grad()
            model.backward(grad_logits)
            fl.optim.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            total += loss * len(batch)
        losses.append(total / n_train)
        print(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}, "
              f"test accuracy {accuracy(model, x_test, y_test):.3f}")
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, x_test, y_test)
    print(f"test accuracy {test_accuracy:.3f} vs chance {1 / len(FREQUENCIES):.3f} "
          f"({epochs} epochs in {seconds:.1f} s)")
    return {"test_accuracy": test_accuracy, "losses": losses, "seconds": seconds}


if __name__ == "__main__":
    main()
