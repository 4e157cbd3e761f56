"""fastlstm.LSTM: a PyTorch ``nn.LSTM``-compatible module over the Cython kernels."""
import collections
import functools
import math

import numpy as np

from . import _functional as F
from ._functional import aligned_empty, aligned_zeros
from ._kernels import lstm as _lstm
from ._threads import get_num_threads
from . import _limits
from .modules import Lookup, Module
from .validation import FLOAT_DTYPES, as_dtype, as_real_array, check_bool, check_float, check_int

_EMPTY_INDEX = np.empty(0, dtype=np.intp)
# Below this many multiply-adds per time step (B * 4H * (in + H)) a second thread costs more
# in per-step barriers than it saves; threads also own at least one block of units each.
_MIN_WORK_PER_THREAD = 1 << 13
_EMPTY_MASK = np.empty(0, dtype=np.uint8)
_EMPTY = {dtype: np.empty(0, dtype) for dtype in FLOAT_DTYPES.values()}   # absent arrays

# Read-only zero initial states by (shape, dtype), for calls without hx: the kernels only
# read them, and making them cost a microsecond a call, which matters to small calls. A
# few shapes are kept, up to 64 KB each.
_ZERO_STATES: dict = {}
_ZERO_STATES_KEPT = 8
_ZERO_STATE_MAX_BYTES = 1 << 16


@functools.lru_cache(maxsize=1024)
def _layer_suffix(layer, direction):
    """The parameter-name suffix of one layer and direction: "_l0", "_l1_reverse"."""
    return f"_l{layer}{'_reverse' if direction == 1 else ''}"


# The arrays of one layer and direction as the kernels take them (empty arrays, or None for
# the bias gradients, where the module has no biases or peepholes). A module's parameter and
# gradient arrays live as long as it does, so each module builds these once.
_Direction = collections.namedtuple(
    "_Direction", "W_ih W_hh b_ih b_hh peep dW_ih dW_hh db_ih db_hh dpeep")


@functools.lru_cache(maxsize=1024)
def _useful_threads(batch, hidden_size, input_size, min_work):
    """Threads worth starting for a step's work: one per `min_work` multiply-adds, at most
    one per slice of hidden units."""
    work = batch * 4 * hidden_size * (hidden_size + min(hidden_size, input_size))
    return min(work // min_work, -(-hidden_size // _lstm.SLICE_UNITS))


class LSTM(Module):
    """Multi-layer LSTM with PyTorch's parameters, shapes and semantics, on NumPy arrays.

    A :class:`fastlstm.Module`: ``named_parameters()``, ``parameters()``, ``grads``,
    ``zero_grad()``, ``state_dict()``, atomic ``load_state_dict()``, ``train()``/``eval()``.

    Parameters
    ----------
    input_size, hidden_size : int
        Features of the input and of the hidden state.
    num_layers : int, default 1
        Stacked layers; layer k > 0 reads the output of layer k-1.
    bias : bool, default True
        Whether the gates have the biases ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
    batch_first : bool, default False
        Input and output are (B, T, features) instead of (T, B, features).
    dropout : float, default 0.0
        Dropout probability on the outputs of every layer but the last, in train mode.
    bidirectional : bool, default False
        Add a direction running backwards in time (parameters suffixed ``_reverse``).
    dtype : {"float32", "float64"}, default "float32"
    peephole : bool, default False
        Peephole weights ``peephole_{i,f,o}_l{k}`` as in ONNX (i, f see c_{t-1}; o sees c_t).
    seed : int, optional
        Seed of the initialisation U(-1/sqrt(H), 1/sqrt(H)) and of the dropout masks.
    reverse : bool, default False
        A single direction that runs backwards in time (ONNX ``direction="reverse"``).
    clip : float, optional
        Clamp every gate pre-activation to [-clip, clip] (ONNX ``clip``).

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> m = fl.LSTM(8, 16, num_layers=2, seed=0)
    >>> out, (h_n, c_n) = m(np.zeros((5, 3, 8), np.float32))
    >>> out.shape, h_n.shape
    ((5, 3, 16), (2, 3, 16))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype="float32", peephole=False, seed=None,
                 *, reverse=False, clip=None):
        config = dict(
            input_size=check_int(input_size, "input_size", 1, 1 << 24),
            hidden_size=check_int(hidden_size, "hidden_size", 1, 1 << 20),
            num_layers=check_int(num_layers, "num_layers", 1, 1 << 10),
            bias=check_bool(bias, "bias"),
            batch_first=check_bool(batch_first, "batch_first"),
            dropout=check_float(dropout, "dropout", 0.0, 1.0, high_open=True),
            bidirectional=check_bool(bidirectional, "bidirectional"),
            dtype=as_dtype(dtype).name,
            peephole=check_bool(peephole, "peephole"),
            seed=None if seed is None else check_int(seed, "seed", 0),
            reverse=check_bool(reverse, "reverse"),
            clip=None if clip is None else check_float(clip, "clip", 0.0, math.inf,
                                                       low_open=True, high_open=True),
        )
        if config["bidirectional"] and config["reverse"]:
            raise ValueError("reverse: a bidirectional LSTM already has a reverse direction; "
                             "expected reverse=False with bidirectional=True")
        self._config = config
        _limits.check_memory(
            f"LSTM(input_size={input_size}, hidden_size={hidden_size}, num_layers={num_layers}): "
            "the parameters and their gradients", 2 * self._parameter_count() * self.dtype.itemsize)
        self.training = True
        self._kept = None
        self._workspace = {}   # training buffers reused from call to call (_reuse, _step_buffers)
        self._passed_size = None   # (T, B, training) of the last call _check_call_size passed
        self._rng = np.random.default_rng(seed)
        self._peephole_blocks = {}     # (layer, direction) -> (3H,) array the p_* are views of
        self._peephole_grad_blocks = {}
        self._init_parameters()
        self._directions = self._direction_arrays()

    # ------------------------------------------------------------------ configuration
    input_size = property(lambda self: self._config["input_size"])
    hidden_size = property(lambda self: self._config["hidden_size"])
    num_layers = property(lambda self: self._config["num_layers"])
    bias = property(lambda self: self._config["bias"])
    batch_first = property(lambda self: self._config["batch_first"])
    dropout = property(lambda self: self._config["dropout"])
    bidirectional = property(lambda self: self._config["bidirectional"])
    peephole = property(lambda self: self._config["peephole"])
    reverse = property(lambda self: self._config["reverse"])
    clip = property(lambda self: self._config["clip"])
    dtype = property(lambda self: FLOAT_DTYPES[self._config["dtype"]])
    num_directions = property(lambda self: 2 if self._config["bidirectional"] else 1)

    def get_config(self):
        """Return the constructor arguments as a dict (dtype as a string)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config):
        """Build an LSTM from :meth:`get_config` output."""
        return cls(**config)

    def __repr__(self):
        defaults = dict(num_layers=1, bias=True, batch_first=False, dropout=0.0,
                        bidirectional=False, dtype="float32", peephole=False, seed=None,
                        reverse=False, clip=None)
        extra = "".join(f", {k}={v!r}" for k, v in self._config.items()
                        if k in defaults and v != defaults[k])
        return f"LSTM({self.input_size}, {self.hidden_size}{extra})"

    # ------------------------------------------------------------------ parameters
    def _peephole_names(self, layer, direction):
        return [f"peephole_{gate}{_layer_suffix(layer, direction)}" for gate in "ifo"]

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions

    def _init_parameters(self):
        H, dtype = self.hidden_size, self.dtype
        bound = 1.0 / math.sqrt(H)

        def uniform(*shape):
            param = aligned_empty(shape, dtype)
            param[...] = self._rng.uniform(-bound, bound, size=shape)
            return param

        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = _layer_suffix(layer, direction)
                self._add_parameter("weight_ih" + suffix,
                                    uniform(4 * H, self._layer_input_size(layer)))
                self._add_parameter("weight_hh" + suffix, uniform(4 * H, H))
                if self.bias:
                    self._add_parameter("bias_ih" + suffix, uniform(4 * H))
                    self._add_parameter("bias_hh" + suffix, uniform(4 * H))
                if self.peephole:   # the three gates' vectors are views of one (3H,) block
                    block, grad_block = uniform(3 * H), np.zeros(3 * H, dtype)
                    self._peephole_blocks[(layer, direction)] = block
                    self._peephole_grad_blocks[(layer, direction)] = grad_block
                    for gate_index, name in enumerate(self._peephole_names(layer, direction)):
                        gate = slice(gate_index * H, (gate_index + 1) * H)
                        self._add_parameter(name, block[gate], grad_block[gate])

    def __getstate__(self):
        # Pickles and copies leave out the reusable training buffers (rebuilt on use).
        state = dict(self.__dict__)
        state["_workspace"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._directions = self._direction_arrays()

    # ------------------------------------------------------------------ input checks
    def _time_major_input(self, x):
        config = self._config
        x = as_real_array(x, "x", self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"x: expected a 3-D (T, B, input_size) / (B, T, input_size) or "
                             f"2-D unbatched (T, input_size) array, got shape {x.shape}")
        if x.shape[-1] != config["input_size"]:
            raise ValueError(f"x: expected input_size {config['input_size']} in the last "
                             f"dimension, got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif config["batch_first"]:
            x = x.transpose(1, 0, 2)
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"x: expected at least one time step and one sequence, got "
                             f"shape {x.shape}")
        return np.ascontiguousarray(x), unbatched

    def _lookup_input(self, lookup):
        """(table, time-major tokens (T*B,), T, B, unbatched) of an embedding Lookup, or
        None when projecting the looked-up rows is cheaper than projecting the table."""
        indices = lookup.indices
        if indices.ndim not in (1, 2) or lookup.shape[-1] != self.input_size:
            raise ValueError(f"x: expected an embedding lookup of shape (T, B, "
                             f"{self.input_size}), (B, T, {self.input_size}) or (T, "
                             f"{self.input_size}), got {lookup.shape}")
        table = lookup.embedding.weight
        if table.dtype != self.dtype or 2 * len(table) > indices.size or indices.size == 0:
            return None
        unbatched = indices.ndim == 1
        if unbatched:
            indices = indices[:, None]
        elif self.batch_first:
            indices = indices.T
        steps, batch = indices.shape
        return table, indices.astype(np.intp).reshape(-1), steps, batch, unbatched

    def _state_shape(self, batch):
        """(D * num_layers, batch, H): the shape of h0, c0, h_n, c_n and their gradients."""
        config = self._config
        return (config["num_layers"] * (2 if config["bidirectional"] else 1), batch,
                config["hidden_size"])

    def _state_input(self, hx, batch, unbatched):
        shape = self._state_shape(batch)
        if hx is None:     # the kernels only read the initial state
            zeros = _ZERO_STATES.get((shape, self.dtype))
            if zeros is None:
                zeros = aligned_zeros(shape, self.dtype)
                zeros.flags.writeable = False
                if zeros.nbytes <= _ZERO_STATE_MAX_BYTES:
                    if len(_ZERO_STATES) >= _ZERO_STATES_KEPT:
                        _ZERO_STATES.clear()
                    _ZERO_STATES[shape, self.dtype] = zeros
            return zeros, zeros
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx: expected a tuple (h0, c0), got {type(hx).__name__}")
        states = []
        for name, state in zip(("h0", "c0"), hx):
            state = as_real_array(state, f"hx[{name}]", self.dtype)
            expected = (shape[0], shape[2]) if unbatched else shape
            if state.shape != expected:
                raise ValueError(f"hx[{name}]: expected shape {expected}, got {state.shape}")
            states.append(np.array(state.reshape(shape), dtype=self.dtype, order="C"))
        return states[0], states[1]

    def _lengths_input(self, lengths, steps, batch):
        if lengths is None:
            return None
        if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):
            lengths = lengths.detach().cpu().numpy()
        array = np.asarray(lengths)
        if array.dtype.kind not in "iuf":
            raise TypeError(f"lengths: expected integers, got dtype {array.dtype}")
        if array.shape != (batch,):
            raise ValueError(f"lengths: expected shape ({batch},) (one per sequence), got "
                             f"{array.shape}")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
            raise ValueError(f"lengths: expected whole numbers, got {array.tolist()}")
        if np.any(array < 1) or np.any(array > steps):
            raise ValueError(f"lengths: expected values in [1, {steps}] (the time steps), got "
                             f"min {array.min()}, max {array.max()}")
        array = array.astype(np.intp)
        return None if np.all(array == steps) else array

    def zero_grad(self):
        """Zero every gradient array in place (an LSTM holds no child modules)."""
        for grad in self._grads.values():
            grad.fill(0)

    # ------------------------------------------------------------------ forward / backward
    def __call__(self, x, hx=None, lengths=None):
        """Run the LSTM.

        Parameters
        ----------
        x : array-like
            (T, B, input_size), (B, T, input_size) with ``batch_first``, or (T, input_size);
            or an embedding's :meth:`~fastlstm.modules.Embedding.lookup`, whose table rows
            the first layer then projects once each (``backward`` adds the embedding's
            gradient and returns None for it).
        hx : tuple of array-like, optional
            (h0, c0), each (D*num_layers, B, H) (or (D*num_layers, H) unbatched); zeros if None.
        lengths : array-like of int, optional
            (B,) valid steps of each sequence, in [1, T] (packed-sequence semantics).

        Returns
        -------
        out : ndarray
            (T, B, D*H) or (B, T, D*H) with ``batch_first``; zeros past a sequence's end.
        (h_n, c_n) : tuple of ndarray
            Each (D*num_layers, B, H), taken at each sequence's last valid step.
        """
        lookup = x if isinstance(x, Lookup) else None
        fused = None if lookup is None else self._lookup_input(lookup)
        if fused is not None:
            x, tokens, steps, batch, unbatched = fused
        else:
            x, unbatched = self._time_major_input(x)
            tokens, (steps, batch) = None, x.shape[:2]
        h0, c0 = self._state_input(hx, batch, unbatched)
        lengths = self._lengths_input(lengths, steps, batch)
        out, h_n, c_n, kept = self._forward(x, tokens, h0, c0, lengths, self.training)
        if self.training:
            kept["lookup"] = lookup
            kept["out_shape"] = (steps, out.shape[2]) if unbatched else (
                (batch, steps, out.shape[2]) if self.batch_first else out.shape)
            self._kept = kept
        return self._format_output(out, h_n, c_n, unbatched)

    forward = __call__

    def _format_output(self, out, h_n, c_n, unbatched):
        """The time-major results in the caller's layout (unbatched or batch_first)."""
        if unbatched:
            return out[:, 0, :], (h_n[:, 0, :], c_n[:, 0, :])
        if self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        return out, (h_n, c_n)

    def _direction_arrays(self):
        """[_Direction] of every layer and direction, index layer * D + direction."""
        directions = []
        params, grads, empty = self._params, self._grads, _EMPTY[self.dtype]
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = _layer_suffix(layer, direction)
                peep = self._peephole_blocks.get((layer, direction), empty)
                dpeep = self._peephole_grad_blocks.get((layer, direction), empty)
                directions.append(_Direction(
                    params["weight_ih" + suffix], params["weight_hh" + suffix],
                    params.get("bias_ih" + suffix, empty), params.get("bias_hh" + suffix, empty),
                    peep, grads["weight_ih" + suffix], grads["weight_hh" + suffix],
                    grads.get("bias_ih" + suffix), grads.get("bias_hh" + suffix), dpeep))
        return directions

    def _kernel_threads(self, batch):
        """Threads for one kernel call: the setting, capped by the work per time step."""
        config = self._config
        return max(1, min(get_num_threads(), _useful_threads(
            batch, config["hidden_size"], config["input_size"], _MIN_WORK_PER_THREAD)))

    def _parameter_count(self):
        H, D = self.hidden_size, self.num_directions
        count = 0
        for layer in range(self.num_layers):
            n_in = self.input_size if layer == 0 else D * H
            count += D * (4 * H * (n_in + H) + 8 * H * self.bias + 3 * H * self.peephole)
        return count

    def _check_call_size(self, steps, batch, training):
        """Refuse, before allocating, a call the kernels cannot index or memory cannot hold
        (a call of the sizes the last one passed with passes)."""
        if (steps, batch, training) == self._passed_size:
            return
        H, D, L, n_in = self.hidden_size, self.num_directions, self.num_layers, self.input_size
        count = steps * batch * max(n_in, D * H, 4 * H)
        per_step = batch * (n_in + 2 * D * H)              # x, two layers' outputs
        if training:   # kept gates (dgates in place), hidden and cell states of every layer
            per_step += L * batch * D * (6 * H + H)
        nbytes = steps * per_step * self.dtype.itemsize
        if training and self.clip is not None:
            nbytes += steps * L * batch * D * 4 * H
        if count <= _limits.INDEX_LIMIT and _limits.fits_memory(nbytes):
            self._passed_size = (steps, batch, training)
            return
        what = f"x with T={steps}, B={batch} for hidden_size={H}"
        _limits.check_index(f"{what}: T * B * max(input_size, 4 * hidden_size)", count)
        _limits.check_memory(f"{what}: the {'training' if training else 'inference'} buffers",
                             nbytes)

    def _forward(self, x, tokens, h0, c0, lengths, training):
        # x: (T, B, in) time-major, or with tokens (T*B,) a table (rows, in) they index
        steps, batch = (x.shape[0], x.shape[1]) if tokens is None else (
            len(tokens) // h0.shape[1], h0.shape[1])
        config, dtype = self._config, self.dtype
        H, L = config["hidden_size"], config["num_layers"]
        D = 2 if config["bidirectional"] else 1
        clip, reverse, dropout = config["clip"] or 0.0, config["reverse"], config["dropout"]
        self._check_call_size(steps, batch, training)
        n_threads = self._kernel_threads(batch)
        h_n = aligned_empty(h0.shape, dtype)
        c_n = aligned_empty(c0.shape, dtype)
        lengths = _EMPTY_INDEX if lengths is None else lengths
        kept = None     # what backward needs, training only
        if training:
            x = self._reuse("x", x.shape, dtype, like=x)
            kept = dict(x=x, tokens=tokens, steps=steps, batch=batch, h0=h0, c0=c0,
                        lengths=lengths, layers=[], n_threads=n_threads)
        inference_buffers = (_EMPTY[dtype],) * 3 + (_EMPTY_MASK,)
        layer_input = x
        for layer in range(L):
            rows = layer_input.reshape(-1, layer_input.shape[-1])
            layer_tokens = _EMPTY_INDEX if layer > 0 or tokens is None else tokens
            if layer == L - 1 and config["batch_first"]:
                # written through strides in the caller's layout: _format_output's
                # transpose of it is a view
                out = aligned_empty((batch, steps, D * H), dtype).transpose(1, 0, 2)
            else:
                out = aligned_empty((steps, batch, D * H), dtype)
            record = dict(input=layer_input, directions=[], mask=None) if training else None
            calls = []
            for direction in range(D):
                index = layer * D + direction
                arrays = self._directions[index]
                if training:   # what backward needs, in buffers reused from call to call
                    buffers = self._step_buffers(index, steps * batch)
                    record["directions"].append(buffers)
                    step_buffers = buffers.values()
                else:          # inference keeps nothing: the call holds its own rings
                    step_buffers = inference_buffers
                calls.append(_lstm.prepare_forward(
                    out, direction * H, h_n[index], c_n[index], *step_buffers, rows,
                    layer_tokens, h0[index], c0[index], arrays.W_ih, arrays.W_hh, arrays.b_ih,
                    arrays.b_hh, arrays.peep, lengths, direction == 1 or reverse, training,
                    clip))
            _lstm.run_forward(calls, n_threads)
            if training:
                if dropout > 0 and layer < L - 1:
                    record["mask"] = F.dropout_mask(self._rng, out.shape, dropout, dtype)
                    out *= record["mask"]
                kept["layers"].append(record)
            layer_input = out
        return layer_input, h_n, c_n, kept

    def _step_buffers(self, index, rows):
        """The training buffers of layer and direction `index` for `rows` = T*B input rows,
        reused from call to call: gates (rows*4H,), hidden and cells (rows*H,), and the clip
        mask clipped (rows*4H,) uint8 (empty without clip), in the kernels' order."""
        key = ("steps", index)
        kept = self._workspace.get(key)
        if kept is not None and kept[0] == rows:
            return kept[1]
        H, dtype = self.hidden_size, self.dtype
        buffers = {"gates": aligned_empty((rows * 4 * H,), dtype),
                   "hidden": aligned_empty((rows * H,), dtype),
                   "cells": aligned_empty((rows * H,), dtype),
                   "clipped": aligned_empty((rows * 4 * H if self.clip is not None else 0,),
                                            np.uint8)}
        self._workspace[key] = (rows, buffers)
        return buffers

    def _reuse(self, key, shape, dtype, like=None):
        """A training buffer kept on the module from call to call (a copy of `like` if given).

        Fresh arrays of this size cost page faults on every call; training calls on one
        module are sequential, and a new call replaces what the last one kept.
        """
        buffer = self._workspace.get(key)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = self._workspace[key] = aligned_empty(shape, dtype)
        if like is not None:
            np.copyto(buffer, like)
        return buffer

    def backward(self, grad_out, grad_state=None, input_grad=True):
        """Backpropagate through the last train-mode call.

        Parameters
        ----------
        grad_out : array-like
            dL/d out, shaped like the ``out`` that call returned.
        grad_state : tuple, optional
            (dL/dh_n, dL/dc_n), each shaped like h_n / c_n or None.
        input_grad : bool
            False skips dL/dx (returned as None): the input needs no gradient, as for a
            PyTorch input that does not require grad. The parameter gradients are the same.

        Returns
        -------
        dx : ndarray or None
            dL/dx, shaped like that call's x.
        (dh0, dc0) : tuple of ndarray
            Gradients of the initial states, shaped like h_n / c_n.

        Parameter gradients are added to :attr:`grads`.
        """
        input_grad = check_bool(input_grad, "input_grad")
        kept = self._kept
        if kept is None:
            raise RuntimeError("backward: no train-mode call to backpropagate through (call the "
                               "module in train mode first; each call supports one backward)")
        # an embedding's gradient (a lookup's dx) is a parameter's: always computed
        skip_dx = not input_grad and kept["lookup"] is None
        steps, batch = kept["steps"], kept["batch"]
        config, dtype = self._config, self.dtype
        H, L = config["hidden_size"], config["num_layers"]
        D = 2 if config["bidirectional"] else 1
        grad = self._grad_output(grad_out, steps, batch)
        dh0, dc0 = self._grad_state(grad_state, batch)
        self._kept = None
        lengths, n_threads = kept["lengths"], kept["n_threads"]
        for layer in reversed(range(L)):
            record = kept["layers"][layer]
            if record["mask"] is not None:
                grad = grad * record["mask"]
            layer_input = record["input"]
            rows = layer_input.reshape(-1, layer_input.shape[-1])
            tokens = kept["tokens"] if layer == 0 else None
            if tokens is None:   # dx (T, B, in), through its rows; no rows: the kernels skip it
                dx = None if layer == 0 and skip_dx else aligned_empty(
                    (steps, batch, rows.shape[1]), dtype)
                dx_rows = (np.empty((0, rows.shape[1]), dtype) if dx is None
                           else dx.reshape(-1, rows.shape[1]))
                dtable = np.empty((0, 4 * H), dtype)
            else:                # dL/dtable = sum over directions of dtable @ W_ih
                dx = np.zeros(rows.shape, dtype)
                dx_rows = np.empty((0, rows.shape[1]), dtype)
                dtable = self._reuse("dtable", (len(rows), 4 * H), dtype)
            for direction in range(D):
                index = layer * D + direction
                arrays = self._directions[index]
                buffers = record["directions"][direction]
                db = _EMPTY[dtype] if arrays.db_ih is None else np.zeros(4 * H, dtype)
                _lstm.lstm_backward(
                    dx_rows, direction == 1, dtable, dh0[index], dc0[index], arrays.dW_ih,
                    arrays.dW_hh, db, arrays.dpeep, grad, direction * H, buffers["gates"],
                    buffers["hidden"], buffers["cells"], buffers["clipped"], rows,
                    _EMPTY_INDEX if tokens is None else tokens, kept["h0"][index],
                    kept["c0"][index], arrays.W_ih, arrays.W_hh, arrays.peep, lengths,
                    direction == 1 or config["reverse"], n_threads)
                if tokens is not None:
                    _lstm.matmul(dx, dtable, arrays.W_ih, False, False, True, n_threads)
                if arrays.db_ih is not None:
                    np.add(arrays.db_ih, db, out=arrays.db_ih)
                    np.add(arrays.db_hh, db, out=arrays.db_hh)
            grad = dx
        return self._format_backward(grad, dh0, dc0, kept)

    def _grad_output(self, grad_out, steps, batch):
        kept_shape = self._kept["out_shape"]
        grad = as_real_array(grad_out, "grad_out", self.dtype)
        if grad.shape != kept_shape:
            raise ValueError(f"grad_out: expected shape {kept_shape} (the output of the last "
                             f"train-mode call), got {grad.shape}")
        grad = np.ascontiguousarray(grad)
        if grad.ndim == 2:
            grad = grad[:, None, :]
        elif self.batch_first:   # the kernels read it through strides
            grad = grad.transpose(1, 0, 2)
        return grad

    def _grad_state(self, grad_state, batch):
        shape = self._state_shape(batch)
        both = aligned_zeros((2,) + shape, self.dtype)    # one allocation for the two
        grads = [both[0], both[1]]
        if grad_state is None:
            return grads
        unbatched = len(self._kept["out_shape"]) == 2
        if not isinstance(grad_state, (tuple, list)) or len(grad_state) != 2:
            raise TypeError(f"grad_state: expected a tuple (grad_h_n, grad_c_n), got "
                            f"{type(grad_state).__name__}")
        for k, (name, value) in enumerate(zip(("grad_h_n", "grad_c_n"), grad_state)):
            if value is None:
                continue
            value = as_real_array(value, f"grad_state[{name}]", self.dtype)
            expected = (shape[0], shape[2]) if unbatched else shape
            if value.shape != expected:
                raise ValueError(f"grad_state[{name}]: expected shape {expected}, got "
                                 f"{value.shape}")
            grads[k][...] = value.reshape(shape)
        return grads

    def _format_backward(self, dx, dh0, dc0, kept):
        """dx in the caller's layout, and the states' gradients; for an embedding lookup,
        dx (of the table or of the rows) goes to the embedding and None comes back."""
        unbatched = len(kept["out_shape"]) == 2
        if unbatched:
            dh0, dc0 = dh0[:, 0, :], dc0[:, 0, :]
        lookup = kept["lookup"]
        if dx is None:  # not asked for
            return None, (dh0, dc0)
        if lookup is not None and kept["tokens"] is not None:
            lookup.add_grad(dx)
            return None, (dh0, dc0)
        if unbatched:
            dx = dx[:, 0, :]
        elif self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        if lookup is not None:
            lookup.add_grad_rows(dx)
            return None, (dh0, dc0)
        return dx, (dh0, dc0)

    # ------------------------------------------------------------------ streaming
    def stream(self, batch_size=1):
        """Return a stateful single-step runner for embedded inference.

        ``y_t = s.step(x_t)`` takes x_t (B, input_size), or (input_size,) when batch_size
        is 1, and returns the last layer's h_t; ``s.state`` is (h, c), each
        (num_layers, B, H); ``s.reset()`` zeroes it. Unidirectional modules only.

        The stream keeps the weights packed for its kernel. Updates through an optimizer's
        ``step()`` or ``load_state_dict`` reach it before its next step; after writing into
        a parameter array directly (``m.weight_hh_l0[...] = w``), call ``s.refresh()``.
        """
        batch_size = check_int(batch_size, "batch_size", 1, 1 << 24)
        _limits.check_index(f"stream(batch_size={batch_size}): batch_size * max(input_size, "
                            "4 * hidden_size)", batch_size * max(self.input_size, 4 * self.hidden_size))
        if self.bidirectional or self.reverse:
            raise ValueError("stream: expected a forward-only LSTM, got "
                             f"bidirectional={self.bidirectional}, reverse={self.reverse}")
        layers = []
        for layer in range(self.num_layers):
            suffix = _layer_suffix(layer, 0)
            params = self._params
            layers.append((params["weight_ih" + suffix], params["weight_hh" + suffix],
                           params.get("bias_ih" + suffix), params.get("bias_hh" + suffix),
                           self._peephole_blocks.get((layer, 0))))
        return Stream(layers, batch_size, self.dtype, self.clip or 0.0)

    # ------------------------------------------------------------------ interop
    @classmethod
    def from_torch(cls, module, dtype=None):
        """Build an LSTM with the configuration and weights of a ``torch.nn.LSTM``."""
        for attribute in ("input_size", "hidden_size", "num_layers", "state_dict"):
            if not hasattr(module, attribute):
                raise TypeError(f"module: expected a torch.nn.LSTM, got {type(module).__name__}")
        if getattr(module, "mode", "LSTM") != "LSTM":   # nn.GRU and nn.RNN share LSTM's fields
            raise TypeError(f"module: not an LSTM: expected a torch.nn.LSTM, got "
                            f"{type(module).__name__} (mode {module.mode!r})")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"module: proj_size={module.proj_size} is not supported, expected 0")
        state = module.state_dict()
        if dtype is None:
            dtype = str(state["weight_ih_l0"].dtype).replace("torch.", "")
        m = cls(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                batch_first=module.batch_first, dropout=float(module.dropout),
                bidirectional=module.bidirectional, dtype=dtype)
        m.load_state_dict(state)
        return m.train(bool(module.training))

    def to_torch(self):
        """Return an equivalent ``torch.nn.LSTM`` (imports torch)."""
        unsupported = [name for name in ("peephole", "reverse", "clip")
                       if self._config[name] not in (False, None)]
        if unsupported:
            raise ValueError(f"to_torch: torch.nn.LSTM has no {', '.join(unsupported)}; "
                             f"got {self!r}")
        import torch

        module = torch.nn.LSTM(self.input_size, self.hidden_size, self.num_layers, bias=self.bias,
                               batch_first=self.batch_first, dropout=self.dropout,
                               bidirectional=self.bidirectional,
                               dtype=getattr(torch, self.dtype.name))
        with torch.no_grad():
            module.load_state_dict({name: torch.from_numpy(param.copy())
                                    for name, param in self._params.items()})
        return module.train(self.training)

    @classmethod
    def from_keras(cls, weights, **kwargs):
        """Build an LSTM from Keras LSTM weights (see :func:`fastlstm.interop.from_keras`)."""
        from .interop import from_keras

        return from_keras(weights, **kwargs)

    @classmethod
    def from_onnx(cls, model_or_path):
        """Build an LSTM from an ONNX LSTM graph (see :func:`fastlstm.onnx.from_onnx`)."""
        from .onnx import from_onnx

        return from_onnx(model_or_path)

    def to_onnx(self, path, **kwargs):
        """Export to an ONNX file (see :func:`fastlstm.onnx.to_onnx`)."""
        from .onnx import to_onnx

        return to_onnx(self, path, **kwargs)


class Stream(_lstm.StreamKernel):
    """Stateful single-step LSTM inference; made by :meth:`LSTM.stream`."""

    def __init__(self, layers, batch_size, dtype, clip):
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)

    @property
    def state(self):
        """(h, c), each (num_layers, B, H): the live state arrays."""
        return self.h, self.c
