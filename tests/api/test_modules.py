"""PyTorch-style modules: the Module protocol (shared with fl.LSTM), Linear, Embedding, Dropout."""
import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, central_differences


class Tagger(fl.Module):
    """Embedding -> LSTM -> Linear on every step, with a shared list of heads."""

    def __init__(self):
        self.embedding = fl.Embedding(6, 3, dtype="float64", seed=0)
        self.lstm = fl.LSTM(3, 4, batch_first=True, dtype="float64", seed=1)
        self.heads = [fl.Linear(4, 2, dtype="float64", seed=2)]

    def forward(self, tokens):
        return self.heads[0](self.lstm(self.embedding(tokens))[0])

    def backward(self, grad):
        self.embedding.backward(self.lstm.backward(self.heads[0].backward(grad))[0])


def test_composite_module_names_parameters_like_pytorch():
    model = Tagger()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0",
                     "lstm.bias_ih_l0", "lstm.bias_hh_l0", "heads.0.weight", "heads.0.bias"]
    assert list(model.grads) == names
    assert model.named_parameters()[1][1] is model.lstm.weight_ih_l0  # live arrays
    params = model.parameters()
    assert [p.name for p in params] == names
    assert params[3].grad is model.lstm.grads["bias_ih_l0"]
    assert model.num_parameters() == 6 * 3 + (16 * 3 + 16 * 4 + 16 + 16) + (4 * 2 + 2)
    assert "(lstm): LSTM(3, 4" in repr(model)


def test_composite_module_gradients_match_finite_differences():
    model = Tagger()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 6, (2, 5))
    projection = rng.standard_normal((2, 5, 2))
    model(tokens)
    model.backward(projection)
    for name, array in model.named_parameters():
        def objective(values, array=array):
            saved = array.copy()
            array[...] = values
            value = float(np.sum(model.eval()(tokens) * projection))
            array[...] = saved
            model.train()
            return value
        expected = central_differences(objective, array.copy())
        assert_close(f"Tagger d{name} vs central differences", model.grads[name], expected, 1e-7)


def test_zero_grad_train_eval_and_state_dict_recurse():
    model = Tagger()
    rng = np.random.default_rng(1)
    model(rng.integers(0, 6, (1, 1)))  # B = 1, T = 1
    model.backward(np.ones((1, 1, 2)))
    assert all(np.any(g != 0) for name, g in model.grads.items()
               if name != "lstm.weight_hh_l0")  # h0 = 0: no W_hh gradient at T = 1
    model.zero_grad()
    assert all(np.all(g == 0) for g in model.grads.values())
    assert model.eval() is model and not model.lstm.training and not model.heads[0].training
    model.train()
    assert model.lstm.training and model.embedding.training

    state = model.state_dict()
    state["lstm.weight_hh_l0"] += 1.0
    other = Tagger()
    weight_ref = other.lstm.weight_hh_l0
    other.load_state_dict(state)
    assert other.lstm.weight_hh_l0 is weight_ref  # copied in place
    assert_close("state dict round trip", other.lstm.weight_hh_l0, state["lstm.weight_hh_l0"], 0)
    with pytest.raises(ValueError, match=r"missing keys \['heads.0.bias'\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "heads.0.bias"})
    with pytest.raises(ValueError, match=r"state_dict\['heads.0.weight'\].*\(2, 4\)"):
        other.load_state_dict({**state, "heads.0.weight": np.zeros((4, 2))})
    other.load_state_dict({"heads.0.bias": np.ones(2)}, strict=False)
    assert np.all(other.heads[0].bias == 1)


def test_shared_module_counts_once():
    class Tied(fl.Module):
        def __init__(self):
            self.a = fl.Linear(2, 2, seed=0)
            self.b = self.a

    assert [name for name, _ in Tied().named_parameters()] == ["a.weight", "a.bias"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, out_features", [((3, 4), 5), ((2, 3, 1), 1), ((1, 7), 9)])
def test_linear_gradients(shape, out_features, dtype):
    rng = np.random.default_rng(2)
    layer = fl.Linear(shape[-1], out_features, dtype=dtype, seed=3)
    x = rng.standard_normal(shape)
    projection = rng.standard_normal(shape[:-1] + (out_features,))
    out = layer(x)
    assert out.dtype == np.dtype(dtype) and out.shape == projection.shape
    dx = layer.backward(projection)
    weight = layer.weight.astype(np.float64)
    bias = layer.bias.astype(np.float64)
    rtol = 1e-7 if dtype == "float64" else 2e-4
    assert_close(f"Linear {dtype} forward", out, x @ weight.T + bias, 1e-12 if dtype == "float64"
                 else 2e-5)
    assert_close(f"Linear {dtype} dx", dx, central_differences(
        lambda v: float(np.sum((v @ weight.T + bias) * projection)), x.copy()), rtol)
    assert_close(f"Linear {dtype} dweight", layer.grads["weight"], central_differences(
        lambda w: float(np.sum((x @ w.T + bias) * projection)), weight.copy()), rtol)
    assert_close(f"Linear {dtype} dbias", layer.grads["bias"],
                 projection.reshape(-1, out_features).sum(0), rtol)


def test_linear_backward_without_input_grad():
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((6, 5, 4)), rng.standard_normal((6, 5, 3))
    grads = []
    for input_grad in (True, False):
        layer = fl.Linear(4, 3, seed=3)
        layer(x)
        dx = layer.backward(g, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append({k: v.copy() for k, v in layer.grads.items()})
    assert all(np.array_equal(grads[0][k], grads[1][k]) for k in grads[0])
    layer(x)
    with pytest.raises(TypeError, match="input_grad"):
        layer.backward(g, input_grad=None)


def test_linear_without_bias_and_bad_input():
    layer = fl.Linear(3, 2, bias=False)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 3\), got \(2, 4\)"):
        layer(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="x: expected real numbers"):
        layer(np.zeros((2, 3), dtype=bool))
    layer(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="grad_out"):
        layer.backward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="in_features"):
        fl.Linear(0, 2)
    with pytest.raises(ValueError, match="dtype"):
        fl.Linear(2, 2, dtype="float16")


def test_backward_protocol_matches_lstm():
    """One backward per train-mode call; eval calls keep nothing and leave the kept call."""
    rng = np.random.default_rng(4)
    for module, x in ((fl.Linear(3, 2, seed=0), rng.standard_normal((4, 3))),
                      (fl.Embedding(5, 2, seed=0), rng.integers(0, 5, (4, 3))),
                      (fl.Dropout(0.5, seed=0), rng.standard_normal((4, 3)))):
        with pytest.raises(RuntimeError, match="no train-mode call"):
            module.backward(np.zeros(1))
        out = module(x)
        module.eval()
        module(x)  # does not replace what the train-mode call kept
        module.train()
        module.backward(np.ones_like(out))
        with pytest.raises(RuntimeError, match="no train-mode call"):
            module.backward(np.ones_like(out))


def test_embedding_lookup_gradients_and_padding():
    layer = fl.Embedding(5, 3, padding_idx=-1, dtype="float64", seed=0)
    assert layer.padding_idx == 4 and np.all(layer.weight[4] == 0)
    tokens = np.array([[0, 4, 0], [2, 2, 2]])
    out = layer(tokens)
    assert_close("Embedding lookup", out, layer.weight[tokens], 0)
    grad = np.arange(18.0).reshape(2, 3, 3)
    assert layer.backward(grad) is None
    expected = np.zeros((5, 3))
    expected[0] = grad[0, 0] + grad[0, 2]
    expected[2] = grad[1].sum(0)
    assert_close("Embedding dweight (repeats summed, padding row 0)", layer.grads["weight"],
                 expected, 0)
    assert layer(np.array([1.0, 3.0])).shape == (2, 3)  # integral floats are indices
    with pytest.raises(ValueError, match=r"indices: expected indices in \[0, 5\)"):
        layer(np.array([5]))
    with pytest.raises(TypeError, match="indices"):
        layer(np.array([0.5]))
    with pytest.raises(ValueError, match="padding_idx"):
        fl.Embedding(5, 3, padding_idx=5)


def test_dropout_scales_and_is_identity_in_eval():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 50))
    drop = fl.Dropout(0.3, seed=1)
    out = drop(x)
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.02
    assert_close("Dropout kept values scaled by 1/(1-p)", out[kept], x[kept] / 0.7, 1e-12)
    assert_close("Dropout backward uses the same mask", drop.backward(np.ones_like(x)),
                 kept / 0.7, 1e-12)
    assert drop.eval()(x) is x
    assert np.all(fl.Dropout(1.0).train()(x) == 0)
    assert np.all(fl.Dropout(0.0)(x) == x)
    with pytest.raises(ValueError, match="p"):
        fl.Dropout(1.5)
    with pytest.raises(TypeError, match="float array"):
        fl.Dropout(0.5)(np.arange(3))


def test_optimizer_accepts_modules_and_parameters():
    model = Tagger()
    by_module = fl.optim.SGD(model, lr=0.1)
    by_list = fl.optim.SGD([model.embedding, model.lstm, *model.heads], lr=0.1)
    by_params = fl.optim.SGD(model.parameters(), lr=0.1)
    assert [p.name for p in by_module.params] == [p.name for p in by_params.params]
    assert [id(p.data) for p in by_list.params] == [id(p.data) for p in by_params.params]
    with pytest.raises(TypeError, match="plain array carries no gradient"):
        fl.optim.SGD([model.lstm.weight_ih_l0])


def _atomicity_cases():
    model = fl.Sequential([fl.layers.Embedding(7, 3, input_shape=(4,)), fl.layers.LSTM(5),
                           fl.layers.Dense(2)], seed=0)
    return [("LSTM", fl.LSTM(3, 4, num_layers=2, peephole=True, seed=0)),
            ("Linear", fl.Linear(3, 2, seed=0)),
            ("Embedding", fl.Embedding(5, 3, seed=0)),
            ("Sequential", model)]


@pytest.mark.parametrize("case", range(4), ids=["LSTM", "Linear", "Embedding", "Sequential"])
def test_load_state_dict_is_atomic(case):
    """A bad entry anywhere in the dict leaves every parameter untouched."""
    _, module = _atomicity_cases()[case]
    before = module.state_dict()
    names = list(before)
    good = {name: value + 1 for name, value in before.items()}
    last = names[-1]
    bad_entries = [
        {**good, last: np.zeros(before[last].shape + (2,))},      # wrong shape, written last
        {**good, last: np.full(before[last].shape, "x")},         # not numbers
        {**good, "extra": np.zeros(1)},                           # unexpected name
        {name: good[name] for name in names[:-1]},                # missing name
    ]
    for bad in bad_entries:
        with pytest.raises((ValueError, TypeError)):
            module.load_state_dict(bad)
        for name, value in module.state_dict().items():
            np.testing.assert_array_equal(value, before[name], err_msg=name)
    live = [array for _, array in module.named_parameters()]
    module.load_state_dict(good)
    for (name, array), old in zip(module.named_parameters(), live):
        assert array is old, name                                  # copied in place
        np.testing.assert_array_equal(array, good[name])


@pytest.mark.parametrize("case", range(4), ids=["LSTM", "Linear", "Embedding", "Sequential"])
def test_protocol_is_the_same_everywhere(case):
    """named_parameters, parameters and grads agree; zero_grad and train/eval reach all."""
    _, module = _atomicity_cases()[case]
    assert isinstance(module, fl.Module)
    names = [name for name, _ in module.named_parameters()]
    params = module.parameters()
    assert [p.name for p in params] == names == list(module.grads) == list(module.state_dict())
    for (name, array), p in zip(module.named_parameters(), params):
        assert p.data is array and p.grad is module.grads[name]
        p.grad[...] = 1.0
    module.zero_grad()
    assert all(not np.any(g) for g in module.grads.values())
    assert module.eval() is module and not module.training
    assert module.train() is module and module.training


def test_non_strict_load_reports_skipped_keys_like_pytorch():
    m = fl.Linear(3, 2, seed=0)
    result = m.load_state_dict({"weight": np.ones((2, 3)), "extra": np.zeros(1)}, strict=False)
    assert result.missing_keys == ["bias"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(m.weight, 1.0)
    m.weight = np.full((2, 3), 2.0)   # assignment copies into the live array
    assert m.weight is m.named_parameters()[0][1] and np.all(m.weight == 2.0)
