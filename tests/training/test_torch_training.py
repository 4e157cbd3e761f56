"""Same numbers as PyTorch: training runs, module gradients and losses (float64).

The network Embedding -> 2-layer LSTM -> Linear (a tiny language model, cross-entropy on
every step) starts from PyTorch's initial weights and trains 20 steps with each optimizer
in fastlstm and in PyTorch; the loss must agree at every step and the weights at the end.
"""
import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, report, require

VOCAB, EMBED, HIDDEN, BATCH, STEPS = 11, 5, 7, 3, 6


class TinyLM(fl.Module):
    """tokens (B, T) -> logits (B, T, VOCAB)."""

    def __init__(self):
        self.embedding = fl.Embedding(VOCAB, EMBED, dtype="float64")
        self.lstm = fl.LSTM(EMBED, HIDDEN, num_layers=2, batch_first=True, dtype="float64")
        self.head = fl.Linear(HIDDEN, VOCAB, dtype="float64")

    def forward(self, tokens):
        out, _ = self.lstm(self.embedding(tokens))
        return self.head(out)

    def backward(self, grad_logits):
        dx, _ = self.lstm.backward(self.head.backward(grad_logits))
        self.embedding.backward(dx)


def torch_lm(torch):
    class TorchLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(VOCAB, EMBED)
            self.lstm = torch.nn.LSTM(EMBED, HIDDEN, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(HIDDEN, VOCAB)

        def forward(self, tokens):
            return self.head(self.lstm(self.embedding(tokens))[0])

    torch.manual_seed(0)
    return TorchLM().double()


OPTIMIZERS = {
    # name: (fastlstm factory, torch factory)
    "sgd_momentum": (lambda p: fl.optim.SGD(p, lr=0.5, momentum=0.9),
                     lambda t, p: t.optim.SGD(p, lr=0.5, momentum=0.9)),
    "sgd_nesterov_l2": (lambda p: fl.optim.SGD(p, lr=0.3, momentum=0.8, nesterov=True,
                                               weight_decay=1e-2),
                        lambda t, p: t.optim.SGD(p, lr=0.3, momentum=0.8, nesterov=True,
                                                 weight_decay=1e-2)),
    "adam": (lambda p: fl.optim.Adam(p, lr=0.05),
             lambda t, p: t.optim.Adam(p, lr=0.05)),
    "adamw": (lambda p: fl.optim.AdamW(p, lr=0.05, weight_decay=0.1),
              lambda t, p: t.optim.AdamW(p, lr=0.05, weight_decay=0.1)),
    "rmsprop_momentum": (lambda p: fl.optim.RMSprop(p, lr=0.01, momentum=0.5),
                         lambda t, p: t.optim.RMSprop(p, lr=0.01, momentum=0.5)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_training_matches_pytorch_step_by_step(name):
    torch = require("torch")
    make_fl, make_torch = OPTIMIZERS[name]
    reference = torch_lm(torch)
    model = TinyLM()
    model.load_state_dict(reference.state_dict())
    opt = make_fl(model.parameters())
    torch_opt = make_torch(torch, reference.parameters())
    loss_fn = fl.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(1)

    losses, torch_losses = [], []
    for _ in range(20):
        tokens = rng.integers(0, VOCAB, (BATCH, STEPS))
        targets = (tokens + 1) % VOCAB  # learnable: the next token id
        loss, grad = loss_fn(targets, model(tokens))
        model.backward(grad)
        opt.step()
        opt.zero_grad()
        losses.append(loss)

        torch_opt.zero_grad()
        logits = reference(torch.from_numpy(tokens))
        torch_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                                       torch.from_numpy(targets).reshape(-1))
        torch_loss.backward()
        torch_opt.step()
        torch_losses.append(torch_loss.item())

    abs_diff, rel_diff = report(f"{name}: loss at each of 20 steps", losses, torch_losses)
    assert rel_diff < 1e-10
    assert losses[-1] < losses[0]  # it trains
    for key, value in reference.state_dict().items():
        assert_close(f"{name}: {key} after 20 steps", model.state_dict()[key], value.numpy(),
                     1e-9)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-5)])
@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3), (1, 1)])
def test_linear_matches_pytorch(shape, dtype, rtol):
    torch = require("torch")
    rng = np.random.default_rng(2)
    in_features, out_features = shape[-1], 6 if shape[-1] != 1 else 1
    layer = fl.Linear(in_features, out_features, dtype=dtype, seed=3)
    reference = torch.nn.Linear(in_features, out_features).to(getattr(torch, dtype))
    layer.load_state_dict(reference.state_dict())
    x = rng.standard_normal(shape).astype(dtype)
    grad = rng.standard_normal(shape[:-1] + (out_features,)).astype(dtype)
    x_t = torch.from_numpy(x).requires_grad_()
    out_t = reference(x_t)
    out_t.backward(torch.from_numpy(grad))
    assert_close("Linear forward", layer(x), out_t.detach().numpy(), rtol)
    assert_close("Linear dx", layer.backward(grad), x_t.grad.numpy(), rtol)
    assert_close("Linear dweight", layer.grads["weight"], reference.weight.grad.numpy(), rtol)
    assert_close("Linear dbias", layer.grads["bias"], reference.bias.grad.numpy(), rtol)


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_matches_pytorch(padding_idx):
    torch = require("torch")
    rng = np.random.default_rng(4)
    layer = fl.Embedding(7, 3, padding_idx=padding_idx, dtype="float64")
    reference = torch.nn.Embedding(7, 3, padding_idx=padding_idx).double()
    layer.load_state_dict(reference.state_dict())
    tokens = np.array([[1, 2, 2, 6], [0, 2, 1, 1]])  # repeated indices accumulate
    grad = rng.standard_normal((2, 4, 3))
    out_t = reference(torch.from_numpy(tokens))
    out_t.backward(torch.from_numpy(grad))
    assert_close("Embedding forward", layer(tokens), out_t.detach().numpy(), 1e-12)
    assert layer.backward(grad) is None
    assert_close("Embedding dweight", layer.grads["weight"], reference.weight.grad.numpy(), 1e-12)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid", "softmax"])
def test_dense_matches_pytorch(activation):
    torch = require("torch")
    rng = np.random.default_rng(5)
    layer = fl.layers.Dense(4, activation=activation, dtype="float64", seed=0)
    x = rng.standard_normal((3, 2, 5))
    layer.build(x.shape[1:])
    grad = rng.standard_normal((3, 2, 4))
    kernel = torch.from_numpy(layer.kernel.copy()).requires_grad_()
    bias = torch.from_numpy(layer.bias.copy()).requires_grad_()
    x_t = torch.from_numpy(x).requires_grad_()
    z = x_t @ kernel + bias
    out_t = {"linear": lambda: z, "relu": lambda: torch.relu(z), "tanh": lambda: torch.tanh(z),
             "sigmoid": lambda: torch.sigmoid(z),
             "softmax": lambda: torch.softmax(z, dim=-1)}[activation]()
    out_t.backward(torch.from_numpy(grad))
    assert_close(f"Dense({activation}) forward", layer(x), out_t.detach().numpy(), 1e-12)
    assert_close(f"Dense({activation}) dx", layer.backward(grad), x_t.grad.numpy(), 1e-12)
    assert_close(f"Dense({activation}) dkernel", layer.grads["kernel"], kernel.grad.numpy(),
                 1e-12)
    assert_close(f"Dense({activation}) dbias", layer.grads["bias"], bias.grad.numpy(), 1e-12)


def _torch_loss(torch, name, y_true, y_pred):
    """PyTorch's value of a Keras loss, with y_pred a leaf tensor."""
    F = torch.nn.functional
    t = torch.from_numpy(y_true)
    if name == "mse":
        return F.mse_loss(y_pred, t)
    if name == "mae":
        return F.l1_loss(y_pred, t)
    if name == "binary_crossentropy":
        return F.binary_cross_entropy(y_pred, t)
    if name == "binary_crossentropy_logits":
        return F.binary_cross_entropy_with_logits(y_pred, t)
    C = y_pred.shape[-1]
    if name == "categorical_crossentropy":
        return -(t * torch.log(y_pred)).sum(-1).mean()
    if name == "categorical_crossentropy_logits":
        return F.cross_entropy(y_pred.reshape(-1, C), t.reshape(-1, C))
    if name == "sparse_categorical_crossentropy":
        return F.nll_loss(torch.log(y_pred).reshape(-1, C), t.reshape(-1))
    return F.cross_entropy(y_pred.reshape(-1, C), t.reshape(-1))


LOSS_CASES = {
    "mse": (fl.losses.MeanSquaredError(), "regression"),
    "mae": (fl.losses.MeanAbsoluteError(), "regression"),
    "binary_crossentropy": (fl.losses.BinaryCrossentropy(), "binary"),
    "binary_crossentropy_logits": (fl.losses.BinaryCrossentropy(from_logits=True), "binary"),
    "categorical_crossentropy": (fl.losses.CategoricalCrossentropy(), "onehot"),
    "categorical_crossentropy_logits": (fl.losses.CategoricalCrossentropy(from_logits=True),
                                        "onehot"),
    "sparse_categorical_crossentropy": (fl.losses.SparseCategoricalCrossentropy(), "sparse"),
    "sparse_categorical_crossentropy_logits": (
        fl.losses.SparseCategoricalCrossentropy(from_logits=True), "sparse"),
}


@pytest.mark.parametrize("name", LOSS_CASES)
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (1, 2)])
def test_losses_match_pytorch(name, shape):
    torch = require("torch")
    loss, kind = LOSS_CASES[name]
    rng = np.random.default_rng(6)
    logits = "logits" in name
    raw = rng.standard_normal(shape) * 2
    if kind == "regression":
        y_pred, y_true = raw, rng.standard_normal(shape)
    elif kind == "binary":
        y_pred = raw if logits else 1 / (1 + np.exp(-raw))
        y_true = rng.integers(0, 2, shape).astype(np.float64)
    else:
        y_pred = raw if logits else np.exp(raw) / np.exp(raw).sum(-1, keepdims=True)
        classes = rng.integers(0, shape[-1], shape[:-1])
        y_true = classes if kind == "sparse" else np.eye(shape[-1])[classes]
    value, grad = loss(y_true, y_pred)
    y_pred_t = torch.from_numpy(y_pred).requires_grad_()
    expected = _torch_loss(torch, name, y_true, y_pred_t)
    expected.backward()
    assert_close(f"{name} value", value, expected.item(), 1e-12)
    assert_close(f"{name} gradient", grad, y_pred_t.grad.numpy(), 1e-12)
    assert loss.value(y_true, y_pred) == value


def test_keras_lstm_layer_matches_pytorch_gradients():
    """fl.layers.LSTM (last step, input dropout off) against torch.nn.LSTM, float64."""
    torch = require("torch")
    rng = np.random.default_rng(7)
    layer = fl.layers.LSTM(5, dtype="float64", seed=1)
    x = rng.standard_normal((2, 4, 3))
    layer.build(x.shape[1:])
    reference = torch.nn.LSTM(3, 5, batch_first=True).double()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in layer.lstm.state_dict().items()})
    grad = rng.standard_normal((2, 5))
    x_t = torch.from_numpy(x).requires_grad_()
    out_t = reference(x_t)[0][:, -1]
    out_t.backward(torch.from_numpy(grad))
    assert_close("keras LSTM forward", layer(x), out_t.detach().numpy(), 1e-12)
    assert_close("keras LSTM dx", layer.backward(grad), x_t.grad.numpy(), 1e-12)
    for name, param in reference.named_parameters():
        assert_close(f"keras LSTM d{name}", layer.lstm.grads[name], param.grad.numpy(), 1e-12)
