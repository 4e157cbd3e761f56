"""Pure-NumPy LSTM forward and backward: the readable spec of the Cython kernels.

The maths is PyTorch's ``nn.LSTM`` (gate order i, f, g, o) with ONNX's extras::

    z     = x_t W_ih^T + h_{t-1} W_hh^T + b
    z_i  += p_i * c_{t-1};  z_f += p_f * c_{t-1}                (peephole P)
    i, f, g = sigmoid(z_i), sigmoid(z_f), tanh(z_g)
    c_t   = f * c_{t-1} + i * g
    z_o  += p_o * c_t;  o = sigmoid(z_o)
    h_t   = o * tanh(c_t)

``clip`` clamps each of z_i, z_f, z_g, z_o (bias and peephole terms included) to
[-clip, clip]; the gradient is zero where ``|z| > clip``. ``lengths`` gives PyTorch's
packed-sequence semantics: sequence b runs its first ``lengths[b]`` steps (the reverse
direction starts at step ``lengths[b] - 1`` from h0/c0), outputs past its end are 0 and
h_n/c_n are the state after its last valid step.

Arrays are time-major: x is (T, B, in). Everything is computed in the dtype of x.
``layer_forward``/``layer_backward`` are one layer in one direction; ``forward``/``backward``
stack them into the multi-layer, optionally bidirectional module, with parameters named as
PyTorch names them. This module is also the NumPy baseline of the benchmarks.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, written through tanh so it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _float_dtype(x: np.ndarray) -> np.dtype[Any]:
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _valid_steps(lengths: npt.ArrayLike | None, T: int, B: int) -> np.ndarray | None:
    """(T, B, 1) bool: True where step t lies inside sequence b; None without lengths."""
    if lengths is None:
        return None
    lengths = np.asarray(lengths)
    if lengths.shape != (B,) or np.any(lengths < 1) or np.any(lengths > T):
        raise ValueError(f"lengths: expected shape ({B},) with values in [1, {T}], "
                         f"got shape {lengths.shape} and values {lengths.tolist()}")
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]


def _clamp(z: np.ndarray, clip: float | None) -> np.ndarray:
    """z clamped to [-clip, clip]; z itself when clip is None."""
    return z if clip is None else np.clip(z, -clip, clip)


def _clip_pass(z: np.ndarray, clip: float) -> np.ndarray:
    """Where the gradient flows through the clamp of z to [-clip, clip] (1.0 or 0.0)."""
    return (np.abs(z) <= clip).astype(z.dtype)


def layer_forward(x: npt.ArrayLike, h0: npt.ArrayLike, c0: npt.ArrayLike, W_ih: npt.ArrayLike,
                  W_hh: npt.ArrayLike, b: npt.ArrayLike | None = None,
                  P: npt.ArrayLike | None = None, lengths: npt.ArrayLike | None = None,
                  reverse: bool = False, clip: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """One LSTM layer in one direction.

    x is (T, B, in); h0, c0 are (B, H); W_ih is (4H, in); W_hh is (4H, H); b is (4H,)
    (b_ih + b_hh) or None; P is (3H,) peepholes stacked [p_i, p_f, p_o] or None; lengths is
    (B,) ints in [1, T] or None. ``reverse`` runs t = T-1 down to 0.

    Returns
    -------
    out : (T, B, H) hidden state of every step (0 past a sequence's end)
    h_n, c_n : (B, H) state after the last processed step
    cache : dict of the named arrays ``layer_backward`` needs
    """
    x = np.asarray(x)
    dtype = _float_dtype(x)
    x = x.astype(dtype, copy=False)
    h0, c0, W_ih, W_hh = (np.asarray(a, dtype=dtype) for a in (h0, c0, W_ih, W_hh))
    b = None if b is None else np.asarray(b, dtype=dtype)
    P = None if P is None else np.asarray(P, dtype=dtype)
    T, B, _ = x.shape
    H = W_hh.shape[1]
    valid = _valid_steps(lengths, T, B)

    # the input projection of every step at once (one 2-D product), bias folded in;
    # the loop adds the recurrent and peephole terms in place
    Z = (x.reshape(T * B, -1) @ W_ih.T).reshape(T, B, 4 * H)  # gate pre-activations, unclamped
    if b is not None:
        Z += b
    W_hh_T = np.ascontiguousarray(W_hh.T)  # (H, 4H), transposed once: BLAS runs faster on it

    IFOG = np.empty((T, B, 4 * H), dtype)  # gates after their nonlinearity
    C = np.empty((T, B, H), dtype)         # cell state computed at step t
    Ct = np.empty((T, B, H), dtype)        # tanh(C)
    Hprev = np.empty((T, B, H), dtype)     # hidden state step t starts from
    Cprev = np.empty((T, B, H), dtype)     # cell state step t starts from
    out = np.zeros((T, B, H), dtype)

    h, c = h0, c0
    for t in (reversed(range(T)) if reverse else range(T)):
        Hprev[t], Cprev[t] = h, c
        z, a = Z[t], IFOG[t]  # (B, 4H) views: this step's pre-activations and gates
        z += h @ W_hh_T
        if P is not None:
            z[:, :H] += P[:H] * c
            z[:, H:2 * H] += P[H:2 * H] * c
        a[:] = sigmoid(_clamp(z, clip))  # i, f, o in one pass; g and a peephole o redone below
        a[:, 2 * H:3 * H] = np.tanh(_clamp(z[:, 2 * H:3 * H], clip))
        i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
        C[t] = f * c + i * g
        if P is not None:
            z[:, 3 * H:] += P[2 * H:] * C[t]
            o[:] = sigmoid(_clamp(z[:, 3 * H:], clip))
        Ct[t] = np.tanh(C[t])
        h_new = o * Ct[t]

        if valid is None:
            out[t] = h_new
            h, c = h_new, C[t]
        else:  # a finished (or, in reverse, not yet started) sequence keeps its state
            out[t] = np.where(valid[t], h_new, 0)
            h = np.where(valid[t], h_new, h)
            c = np.where(valid[t], C[t], c)

    cache = dict(x=x, W_ih=W_ih, W_hh=W_hh, b=b, P=P, valid=valid, reverse=reverse, clip=clip,
                 Z=Z, IFOG=IFOG, C=C, Ct=Ct, Hprev=Hprev, Cprev=Cprev)
    return out, h, c.copy(), cache  # c may be a view into C


def layer_backward(grad_out: npt.ArrayLike, grad_h_n: npt.ArrayLike | None,
                   grad_c_n: npt.ArrayLike | None, cache: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """Gradients of one layer in one direction, mirroring ``layer_forward``.

    grad_out is (T, B, H) (entries past a sequence's end are ignored); grad_h_n, grad_c_n
    are (B, H) or None.

    Returns
    -------
    dict with dx (T, B, in), dh0, dc0 (B, H), dW_ih (4H, in), dW_hh (4H, H),
    db (4H,) or None, dP (3H,) or None.
    """
    x, W_ih, W_hh, b, P = cache["x"], cache["W_ih"], cache["W_hh"], cache["b"], cache["P"]
    valid, clip = cache["valid"], cache["clip"]
    Z, IFOG, C, Ct, Hprev, Cprev = (cache[k] for k in ("Z", "IFOG", "C", "Ct", "Hprev", "Cprev"))
    dtype = x.dtype
    T, B, _ = x.shape
    H = W_hh.shape[1]
    grad_out = np.asarray(grad_out, dtype=dtype)

    dZ = np.zeros((T, B, 4 * H), dtype)
    dP: Any = None if P is None else np.zeros(3 * H, dtype)
    dh = np.zeros((B, H), dtype) if grad_h_n is None else np.array(grad_h_n, dtype=dtype)
    dc = np.zeros((B, H), dtype) if grad_c_n is None else np.array(grad_c_n, dtype=dtype)

    # visit the steps in the opposite order of the forward pass
    for t in (range(T) if cache["reverse"] else reversed(range(T))):
        i, f, g, o = (IFOG[t, :, k * H:(k + 1) * H] for k in range(4))
        if valid is None:
            dh_new = dh + grad_out[t]
            dc_new = dc
        else:
            dh_new = np.where(valid[t], dh + grad_out[t], 0)
            dc_new = np.where(valid[t], dc, 0)

        # h_t = o * tanh(c_t)
        do = dh_new * Ct[t]
        dc_new = dc_new + dh_new * o * (1 - Ct[t] ** 2)
        dz_o = do * o * (1 - o)
        if clip is not None:
            dz_o *= _clip_pass(Z[t, :, 3 * H:], clip)
        if P is not None:  # z_o += p_o * c_t
            dc_new += dz_o * P[2 * H:]
            dP[2 * H:] += (dz_o * C[t]).sum(axis=0)

        # c_t = f * c_{t-1} + i * g
        di = dc_new * g
        df = dc_new * Cprev[t]
        dg = dc_new * i
        dc_prev = dc_new * f
        dz_i = di * i * (1 - i)
        dz_f = df * f * (1 - f)
        dz_g = dg * (1 - g ** 2)
        if clip is not None:
            dz_i *= _clip_pass(Z[t, :, :H], clip)
            dz_f *= _clip_pass(Z[t, :, H:2 * H], clip)
            dz_g *= _clip_pass(Z[t, :, 2 * H:3 * H], clip)
        if P is not None:  # z_i += p_i * c_{t-1}, z_f += p_f * c_{t-1}
            dc_prev += dz_i * P[:H] + dz_f * P[H:2 * H]
            dP[:H] += (dz_i * Cprev[t]).sum(axis=0)
            dP[H:2 * H] += (dz_f * Cprev[t]).sum(axis=0)

        dZ[t] = np.concatenate([dz_i, dz_f, dz_g, dz_o], axis=1)
        # z = x_t W_ih^T + h_{t-1} W_hh^T + b
        dh_prev = dZ[t] @ W_hh
        if valid is None:
            dh, dc = dh_prev, dc_prev
        else:  # a step that did not run passes the state gradient through unchanged
            dh = np.where(valid[t], dh_prev, dh)
            dc = np.where(valid[t], dc_prev, dc)

    # the weight and input gradients of every step at once
    dZ_rows = dZ.reshape(T * B, 4 * H)
    return dict(
        dx=(dZ_rows @ W_ih).reshape(x.shape),
        dh0=dh,
        dc0=dc,
        dW_ih=dZ_rows.T @ x.reshape(T * B, -1),
        dW_hh=dZ_rows.T @ Hprev.reshape(T * B, H),
        db=None if b is None else dZ_rows.sum(axis=0),
        dP=dP,
    )


def _directions(bidirectional: bool, reverse: bool) -> list[tuple[str, bool]]:
    """(name suffix, runs reversed) for each direction of a layer."""
    if bidirectional:
        if reverse:
            raise ValueError("reverse: expected False with bidirectional=True, got True")
        return [("", False), ("_reverse", True)]
    return [("", reverse)]


def forward(params: Mapping[str, Any], x: npt.ArrayLike,
            hx: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
            lengths: npt.ArrayLike | None = None, *, num_layers: int = 1,
            bidirectional: bool = False, reverse: bool = False, clip: float | None = None,
            peephole: bool = False, bias: bool = True,
            dropout_masks: Sequence[npt.ArrayLike] | None = None
            ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """The multi-layer (optionally bidirectional) LSTM module.

    params is a dict with PyTorch's names (weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k},
    bias_hh_l{k}, peephole_{i,f,o}_l{k}, suffix ``_reverse`` for the second direction);
    x is (T, B, in); hx is (h0, c0), each (D*num_layers, B, H), or None for zeros;
    dropout_masks is None or num_layers-1 arrays (T, B, D*H), already scaled by 1/(1-p),
    multiplied into layer k's output before it feeds layer k+1.

    Returns
    -------
    out : (T, B, D*H) last layer's outputs, directions concatenated [forward, reverse]
    (h_n, c_n) : each (D*num_layers, B, H), index layer*D + direction
    cache : what ``backward`` needs
    """
    x = np.asarray(x)
    dtype = _float_dtype(x)
    x = x.astype(dtype, copy=False)
    directions = _directions(bidirectional, reverse)
    D = len(directions)
    T, B, _ = x.shape
    H = np.shape(params["weight_hh_l0"])[1]
    if dropout_masks is not None and len(dropout_masks) != num_layers - 1:
        raise ValueError(f"dropout_masks: expected {num_layers - 1} arrays, got {len(dropout_masks)}")
    if hx is None:
        h0 = c0 = np.zeros((D * num_layers, B, H), dtype)
    else:
        h0, c0 = (np.asarray(s, dtype=dtype) for s in hx)

    layer_input = x
    h_n = np.empty((D * num_layers, B, H), dtype)
    c_n = np.empty((D * num_layers, B, H), dtype)
    layer_caches = []
    for k in range(num_layers):
        outs, caches = [], []
        for d, (suffix, runs_reversed) in enumerate(directions):
            name = f"l{k}{suffix}"
            b = params[f"bias_ih_{name}"] + params[f"bias_hh_{name}"] if bias else None
            P = (np.concatenate([params[f"peephole_{gate}_{name}"] for gate in "ifo"])
                 if peephole else None)
            out_d, h_n[k * D + d], c_n[k * D + d], cache_d = layer_forward(
                layer_input, h0[k * D + d], c0[k * D + d], params[f"weight_ih_{name}"],
                params[f"weight_hh_{name}"], b, P, lengths, runs_reversed, clip)
            outs.append(out_d)
            caches.append(cache_d)
        layer_out = np.concatenate(outs, axis=-1)
        layer_caches.append(caches)
        if dropout_masks is not None and k < num_layers - 1:
            layer_out = layer_out * np.asarray(dropout_masks[k], dtype=dtype)
        layer_input = layer_out

    cache = dict(layers=layer_caches, directions=directions, dropout_masks=dropout_masks,
                 bias=bias, peephole=peephole, H=H)
    return layer_input, (h_n, c_n), cache


def backward(cache: Mapping[str, Any], grad_out: npt.ArrayLike,
             grad_h_n: np.ndarray | None = None, grad_c_n: np.ndarray | None = None
             ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """Gradients of the module, mirroring ``forward``.

    grad_out is (T, B, D*H); grad_h_n, grad_c_n are (D*num_layers, B, H) or None.

    Returns
    -------
    dx : (T, B, in)
    (dh0, dc0) : each (D*num_layers, B, H)
    grads : dict keyed like params (bias_ih and bias_hh both receive db)
    """
    directions, H = cache["directions"], cache["H"]
    dropout_masks = cache["dropout_masks"]
    num_layers, D = len(cache["layers"]), len(directions)
    dtype = cache["layers"][0][0]["x"].dtype
    B = cache["layers"][0][0]["x"].shape[1]
    dh0 = np.empty((D * num_layers, B, H), dtype)
    dc0 = np.empty((D * num_layers, B, H), dtype)
    grads = {}

    grad_layer_out = np.asarray(grad_out, dtype=dtype)
    for k in reversed(range(num_layers)):
        grad_layer_input: Any = 0
        for d, (suffix, _) in enumerate(directions):
            name = f"l{k}{suffix}"
            g = layer_backward(
                grad_layer_out[:, :, d * H:(d + 1) * H],
                None if grad_h_n is None else grad_h_n[k * D + d],
                None if grad_c_n is None else grad_c_n[k * D + d],
                cache["layers"][k][d])
            grad_layer_input = grad_layer_input + g["dx"]
            dh0[k * D + d], dc0[k * D + d] = g["dh0"], g["dc0"]
            grads[f"weight_ih_{name}"] = g["dW_ih"]
            grads[f"weight_hh_{name}"] = g["dW_hh"]
            if cache["bias"]:
                grads[f"bias_ih_{name}"] = g["db"]
                grads[f"bias_hh_{name}"] = g["db"].copy()
            if cache["peephole"]:
                for j, gate in enumerate("ifo"):
                    grads[f"peephole_{gate}_{name}"] = g["dP"][j * H:(j + 1) * H]
        if k > 0 and dropout_masks is not None:
            grad_layer_input = grad_layer_input * np.asarray(dropout_masks[k - 1], dtype=dtype)
        grad_layer_out = grad_layer_input
    return grad_layer_out, (dh0, dc0), grads
