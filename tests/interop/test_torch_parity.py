"""fastlstm.LSTM against torch.nn.LSTM: outputs, states and every gradient."""
import itertools

import numpy as np
import pytest
from conftest import assert_close, require

import fastlstm as fl

torch = require("torch")

TOLERANCE = {"float32": (2e-5, 2e-4), "float64": (1e-9, 1e-9)}
SIZES = [  # (T, B, input_size, H)
    (4, 3, 5, 7),
    (1, 1, 1, 1),      # T=1, B=1, H=1
    (6, 1, 3, 129),    # H=129, not a multiple of 8
    (3, 4, 16, 9),     # in != H
]


def compare(dtype, T, B, input_size, H, *, num_layers=1, bidirectional=False,
            batch_first=False, bias=True, with_hx=False, lengths=None, seed=0):
    """Run one configuration in both libraries and assert every result matches."""
    forward_tol, grad_tol = TOLERANCE[dtype]
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(seed)
    reference = torch.nn.LSTM(input_size, H, num_layers, bias=bias, batch_first=batch_first,
                              bidirectional=bidirectional, dtype=torch_dtype)
    module = fl.LSTM.from_torch(reference)
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((B, T, input_size) if batch_first else (T, B, input_size))
    x = x.astype(dtype)
    state_shape = (D * num_layers, B, H)
    h0, c0 = (rng.standard_normal(state_shape).astype(dtype) for _ in range(2))
    grad_h_n, grad_c_n = (rng.standard_normal(state_shape).astype(dtype) for _ in range(2))

    x_t = torch.tensor(x, requires_grad=True)
    hx_t = None
    if with_hx:
        hx_t = (torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True))
    if lengths is None:
        out_t, (h_n_t, c_n_t) = reference(x_t, hx_t)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x_t, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        out_packed, (h_n_t, c_n_t) = reference(packed, hx_t)
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out_packed, batch_first=batch_first, total_length=T)
    grad_out = rng.standard_normal(tuple(out_t.shape)).astype(dtype)
    loss = ((out_t * torch.tensor(grad_out)).sum() + (h_n_t * torch.tensor(grad_h_n)).sum()
            + (c_n_t * torch.tensor(grad_c_n)).sum())
    loss.backward()

    out, (h_n, c_n) = module(x, (h0, c0) if with_hx else None, lengths=lengths)
    dx, (dh0, dc0) = module.backward(grad_out, (grad_h_n, grad_c_n))

    assert out.dtype == np.dtype(dtype) and out.flags.c_contiguous
    assert_close("out", out, out_t.detach().numpy(), forward_tol)
    assert_close("h_n", h_n, h_n_t.detach().numpy(), forward_tol)
    assert_close("c_n", c_n, c_n_t.detach().numpy(), forward_tol)
    assert_close("dx", dx, x_t.grad.numpy(), grad_tol)
    if with_hx:
        assert_close("dh0", dh0, hx_t[0].grad.numpy(), grad_tol)
        assert_close("dc0", dc0, hx_t[1].grad.numpy(), grad_tol)
    for name, param in reference.named_parameters():
        assert_close(f"grad {name}", module.grads[name], param.grad.numpy(), grad_tol)
    assert set(module.grads) == {name for name, _ in reference.named_parameters()}


FLAGS = list(itertools.product([1, 2], [False, True], [False, True], [True, False],
                               [False, True]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias,with_hx", FLAGS)
def test_configuration_matrix(dtype, num_layers, bidirectional, batch_first, bias, with_hx):
    compare(dtype, 4, 3, 5, 7, num_layers=num_layers, bidirectional=bidirectional,
            batch_first=batch_first, bias=bias, with_hx=with_hx)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_awkward_sizes(dtype, size, num_layers, bidirectional):
    compare(dtype, *size, num_layers=num_layers, bidirectional=bidirectional, with_hx=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first", [
    (1, False, False), (1, True, True), (2, True, False), (2, False, True)])
@pytest.mark.parametrize("lengths", [[5, 2, 1], [1, 5, 3], [5, 5, 5]])
def test_lengths_match_packed_sequences(dtype, num_layers, bidirectional, batch_first, lengths):
    compare(dtype, 5, 3, 4, 6, num_layers=num_layers, bidirectional=bidirectional,
            batch_first=batch_first, with_hx=True, lengths=lengths)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_long_sequence_and_wide_hidden(dtype):
    compare(dtype, 40, 5, 33, 70, num_layers=2, bidirectional=True, with_hx=True,
            lengths=[40, 17, 1, 39, 25])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_unbatched_input(bidirectional):
    torch.manual_seed(3)
    reference = torch.nn.LSTM(4, 6, 2, bidirectional=bidirectional, dtype=torch.float64)
    module = fl.LSTM.from_torch(reference)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4))
    h0, c0 = rng.standard_normal((2, module.num_directions * 2, 6))
    x_t = torch.tensor(x, requires_grad=True)
    hx_t = (torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True))
    out_t, (h_n_t, c_n_t) = reference(x_t, hx_t)
    grad_out = rng.standard_normal(tuple(out_t.shape))
    (out_t * torch.tensor(grad_out)).sum().backward()
    out, (h_n, c_n) = module(x, (h0, c0))
    dx, (dh0, dc0) = module.backward(grad_out)
    assert out.shape == tuple(out_t.shape) and h_n.shape == tuple(h_n_t.shape)
    assert_close("out", out, out_t.detach().numpy(), 1e-9)
    assert_close("h_n", h_n, h_n_t.detach().numpy(), 1e-9)
    assert_close("c_n", c_n, c_n_t.detach().numpy(), 1e-9)
    assert_close("dx", dx, x_t.grad.numpy(), 1e-9)
    assert_close("dh0", dh0, hx_t[0].grad.numpy(), 1e-9)
    assert_close("dc0", dc0, hx_t[1].grad.numpy(), 1e-9)


def test_to_torch_round_trip():
    module = fl.LSTM(3, 5, 2, bidirectional=True, batch_first=True, seed=1).eval()
    reference = module.to_torch()
    assert not reference.training and reference.batch_first
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    with torch.no_grad():
        out_t, _ = reference(torch.tensor(x))
    out, _ = module(x)
    assert_close("out", out, out_t.numpy(), 2e-5)
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(reference.state_dict()[name].numpy(), value)


def test_init_matches_pytorch_distribution():
    module = fl.LSTM(10, 64, seed=0)
    bound = 1 / np.sqrt(64)
    for name, param in module.named_parameters():
        assert np.all(np.abs(param) <= bound), name
        assert param.std() == pytest.approx(bound / np.sqrt(3), rel=0.1), name
    assert [name for name, _ in module.named_parameters()] == [
        name for name, _ in torch.nn.LSTM(10, 64).named_parameters()]


@pytest.mark.parametrize("make", [lambda: torch.nn.GRU(3, 5), lambda: torch.nn.RNN(3, 5)],
                         ids=["GRU", "RNN"])
def test_from_torch_refuses_a_recurrent_module_that_is_not_an_lstm(make):
    reference = make()
    with pytest.raises(TypeError, match=f"module: not an LSTM: expected a torch.nn.LSTM, got "
                                        f"{type(reference).__name__}"):
        fl.LSTM.from_torch(reference)
