"""Reduced-precision inference: ``fl.quantize(m, "bfloat16" | "int8")``.

bfloat16: the weights are rounded to bfloat16 (nearest even); per step the layer input
x_t and h_{t-1} are rounded to bfloat16 too, products are exact and summed in float32, and
the bias, peepholes, cell state and gate activations stay float32.
int8: each weight row has a float32 scale max|row| / 127 and int8 values round(W / scale);
per step each batch row of x_t and h_{t-1} is quantised to u8 over its range (including 0)
with its own scale and zero point; products sum exactly in int32 and are rescaled to float32
before the gate activations.

The kernels (``fastlstm/_kernels/quant.pyx``) use AVX512-BF16 / AVX512-VNNI where the CPU has
them and a portable float32 / int32 path elsewhere (``set_quantized_path("portable")`` or
the environment variable ``FASTLSTM_QUANT_PATH=portable`` forces it).
"""
import numpy as np

from ._kernels import quant as _quant
from ._kernels.quant import cpu_paths, quantized_path, set_quantized_path
from .lstm import LSTM, _layer_suffix
from .validation import as_real_array, check_bool, check_int

DTYPES = _quant.DTYPES
_LANES = 16
_EMPTY_F = np.empty(0, np.float32)
_EMPTY_I = np.empty(0, np.int32)
_EMPTY_INDEX = np.empty(0, dtype=np.intp)

__all__ = ["quantize", "QuantizedLSTM", "QuantizedStream", "cpu_paths", "quantized_path",
           "set_quantized_path"]


def to_bfloat16(array):
    """float32 array -> bfloat16 bits (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bfloat16(bits):
    """bfloat16 bits (uint16) -> float32, exactly."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def quantize_rows_int8(W):
    """Symmetric int8 per row: ``(q int8, scale float32)`` with W ~= q * scale[:, None]."""
    W = np.asarray(W, np.float32)
    scale = np.abs(W).max(axis=1) / np.float32(127)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(W / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _panels(W, H, group):
    """Pack W (4H, K) into 16-column panels, k grouped by `group` (2 bf16, 4 int8)."""
    K = W.shape[1]
    blocks, Kp = -(-H // _LANES), -(-K // group) * group
    padded = np.zeros((4, blocks * _LANES, Kp), W.dtype)
    padded[:, :H, :K] = W.reshape(4, H, K)
    packed = padded.reshape(4, blocks, _LANES, Kp // group, group).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(packed).reshape(-1)


def _per_panel(values, H):
    """(4H,) per-row values -> (4 * blocks * 16,), zero past H in each gate."""
    blocks = -(-H // _LANES)
    out = np.zeros((4, blocks * _LANES), values.dtype)
    out[:, :H] = values.reshape(4, H)
    return out.reshape(-1)


def quantize(module, dtype):
    """Return a reduced-precision, inference-only copy of a float32 :class:`fastlstm.LSTM`.

    Parameters
    ----------
    module : LSTM
        A float32 module in eval mode (``m.eval()``).
    dtype : {"bfloat16", "int8"}

    Returns
    -------
    QuantizedLSTM
        Called like the module: ``out, (h_n, c_n) = q(x, hx=None, lengths=None)``, float32
        in and out.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> m = fl.LSTM(8, 16, seed=0).eval()
    >>> q = fl.quantize(m, "bfloat16")
    >>> x = np.random.default_rng(0).standard_normal((5, 2, 8)).astype(np.float32)
    >>> bool(np.abs(q(x)[0] - m(x)[0]).max() < 2e-2)
    True
    """
    if not isinstance(module, LSTM):
        raise TypeError(f"module: expected a fastlstm.LSTM, got {type(module).__name__}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    if module.dtype != np.float32:
        raise ValueError(f"module: expected a float32 LSTM, got dtype {module.dtype}; "
                         "build it with dtype='float32' and load the weights")
    if module.training:
        raise ValueError("module: expected eval mode (quantised modules are inference only); "
                         "call module.eval() first")
    config = dict(module.get_config(), quantization=dtype)
    state = {}
    for name, array in module.state_dict().items():
        if name.startswith("weight_"):
            if dtype == "bfloat16":
                state[name] = from_bfloat16(to_bfloat16(array))
            else:
                state[name], state[name.replace("weight_", "scale_")] = quantize_rows_int8(array)
        else:
            state[name] = array
    q = QuantizedLSTM.from_config(config)
    q.load_state_dict(state)
    return q


class QuantizedLSTM:
    """An inference-only LSTM with bfloat16 or int8 weights (made by :func:`quantize`).

    ``q(x, hx=None, lengths=None)`` takes and returns what the float32 module does.
    ``state_dict()`` holds bfloat16-valued float32 weights (saved as BF16) or int8 weights
    with float32 row scales ``scale_ih_l{k}``, ``scale_hh_l{k}``; biases and peepholes stay
    float32. ``fl.save`` / ``fl.load`` write and read it.
    """

    training = False
    dtype = np.dtype(np.float32)    # of inputs, outputs and state

    def __init__(self, config):
        self._config = config
        self._state = {}
        self._layers = None     # per (layer, direction): the kernel's packed arguments
        self._passed_size = None   # (T, B, training) of the last call _check_call_size passed

    input_size = property(lambda self: self._config["input_size"])
    hidden_size = property(lambda self: self._config["hidden_size"])
    num_layers = property(lambda self: self._config["num_layers"])
    bias = property(lambda self: self._config["bias"])
    batch_first = property(lambda self: self._config["batch_first"])
    bidirectional = property(lambda self: self._config["bidirectional"])
    peephole = property(lambda self: self._config["peephole"])
    reverse = property(lambda self: self._config["reverse"])
    clip = property(lambda self: self._config["clip"])
    quantization = property(lambda self: self._config["quantization"])
    num_directions = property(lambda self: 2 if self._config["bidirectional"] else 1)

    # The float32 module's input checks, shared.
    _time_major_input = LSTM._time_major_input
    _state_shape = LSTM._state_shape
    _state_input = LSTM._state_input
    _lengths_input = LSTM._lengths_input
    _kernel_threads = LSTM._kernel_threads
    _check_call_size = LSTM._check_call_size
    _format_output = LSTM._format_output
    _peephole_names = LSTM._peephole_names
    _layer_input_size = LSTM._layer_input_size

    @classmethod
    def from_config(cls, config):
        """Check a config (an LSTM config plus ``quantization``); weights come from
        :meth:`load_state_dict`."""
        if not isinstance(config, dict):
            raise TypeError(f"config: expected a dict, got {type(config).__name__}")
        checked = dict(
            input_size=check_int(config.get("input_size"), "input_size", 1, 1 << 24),
            hidden_size=check_int(config.get("hidden_size"), "hidden_size", 1, 1 << 20),
            num_layers=check_int(config.get("num_layers", 1), "num_layers", 1, 1 << 10),
            bias=check_bool(config.get("bias", True), "bias"),
            batch_first=check_bool(config.get("batch_first", False), "batch_first"),
            bidirectional=check_bool(config.get("bidirectional", False), "bidirectional"),
            peephole=check_bool(config.get("peephole", False), "peephole"),
            reverse=check_bool(config.get("reverse", False), "reverse"),
            clip=config.get("clip"),
            quantization=config.get("quantization"),
        )
        if checked["quantization"] not in DTYPES:
            raise ValueError(f"quantization: expected one of {DTYPES}, got "
                             f"{checked['quantization']!r}")
        clip = checked["clip"]
        if clip is not None and not (isinstance(clip, (int, float)) and not isinstance(clip, bool)
                                     and 0 < clip < float("inf")):
            raise ValueError(f"clip: expected None or a positive finite number, got {clip!r}")
        if config.get("dtype", "float32") != "float32":
            raise ValueError(f"dtype: expected 'float32', got {config.get('dtype')!r}")
        return cls(checked)

    def get_config(self):
        """The LSTM config plus ``quantization`` (``dtype`` is that of inputs: float32)."""
        return dict(self._config, dtype="float32", dropout=0.0, seed=None)

    def __repr__(self):
        return (f"QuantizedLSTM({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, quantization={self.quantization!r})")

    # ------------------------------------------------------------------ weights
    def _expected(self):
        """name -> (shape, dtype) of every tensor of this config."""
        H, int8 = self.hidden_size, self.quantization == "int8"
        wtype = np.int8 if int8 else np.float32
        expected = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = _layer_suffix(layer, direction)
                n_in = self._layer_input_size(layer)
                expected["weight_ih" + suffix] = ((4 * H, n_in), wtype)
                expected["weight_hh" + suffix] = ((4 * H, H), wtype)
                if int8:
                    expected["scale_ih" + suffix] = ((4 * H,), np.float32)
                    expected["scale_hh" + suffix] = ((4 * H,), np.float32)
                if self.bias:
                    expected["bias_ih" + suffix] = ((4 * H,), np.float32)
                    expected["bias_hh" + suffix] = ((4 * H,), np.float32)
                if self.peephole:
                    for name in self._peephole_names(layer, direction):
                        expected[name] = ((H,), np.float32)
        return expected

    def state_dict(self):
        """Dict name -> copy of each stored tensor."""
        return {name: array.copy() for name, array in self._state.items()}

    @property
    def bfloat16_tensors(self):
        """Names :func:`fastlstm.save` stores as BF16 (the bfloat16-valued weights)."""
        if self.quantization != "bfloat16":
            return ()
        return tuple(name for name in self._state if name.startswith("weight_"))

    def load_state_dict(self, state_dict):
        """Replace every tensor, checked first (names, shapes, dtypes, bf16/int8 values)."""
        expected = self._expected()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(map(str, set(state_dict) - set(expected)))
        if missing or unexpected:
            raise ValueError(f"state_dict: missing keys {missing}, unexpected keys "
                             f"{unexpected} for {self!r}")
        state = {}
        for name, (shape, dtype) in expected.items():
            value = np.asarray(state_dict[name])
            if value.shape != shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {shape}, got {value.shape}")
            if dtype == np.int8:
                if value.dtype != np.int8 or np.any(value == -128):
                    raise ValueError(f"state_dict[{name!r}]: expected int8 values in "
                                     f"[-127, 127], got {value.dtype} (min {value.min()})")
                state[name] = np.ascontiguousarray(value)
                continue
            value = np.array(as_real_array(value, f"state_dict[{name!r}]", np.float32),
                             np.float32, order="C")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"state_dict[{name!r}]: expected finite values")
            if name.startswith("scale_") and not np.all(value > 0):
                raise ValueError(f"state_dict[{name!r}]: expected positive scales, got min "
                                 f"{value.min()}")
            if name.startswith("weight_"):   # bfloat16 weights: exactly representable
                if np.any(value.view(np.uint32) & 0xFFFF):
                    raise ValueError(f"state_dict[{name!r}]: expected bfloat16 values "
                                     "(float32 with the low 16 bits zero)")
            state[name] = value
        self._state = state
        self._layers = self._pack()

    def _pack(self):
        layers = {}
        H, state, int8 = self.hidden_size, self._state, self.quantization == "int8"
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = _layer_suffix(layer, direction)
                args = []
                for kind in ("ih", "hh"):
                    W = state[f"weight_{kind}{suffix}"]
                    if int8:
                        args.append((_panels(W, H, 4),
                                     _per_panel(state[f"scale_{kind}{suffix}"], H),
                                     _per_panel(W.astype(np.int32).sum(axis=1, dtype=np.int32), H)))
                    else:
                        args.append((_panels(to_bfloat16(W), H, 2), _EMPTY_F, _EMPTY_I))
                bias = (state["bias_ih" + suffix] + state["bias_hh" + suffix] if self.bias
                        else np.zeros(4 * H, np.float32))
                peep = (np.concatenate([state[name] for name in
                                        self._peephole_names(layer, direction)])
                        if self.peephole else _EMPTY_F)
                layers[(layer, direction)] = (args[0][0], args[1][0], args[0][1], args[1][1],
                                              args[0][2], args[1][2], bias, peep)
        return layers

    # ------------------------------------------------------------------ inference
    def __call__(self, x, hx=None, lengths=None):
        """Run the quantised LSTM; arguments and results as :meth:`fastlstm.LSTM.__call__`."""
        x, unbatched = self._time_major_input(x)
        steps, batch = x.shape[0], x.shape[1]
        h0, c0 = self._state_input(hx, batch, unbatched)
        lengths = self._lengths_input(lengths, steps, batch)
        self._check_call_size(steps, batch, False)
        return self._format_output(*self._forward(x, h0, c0, lengths), unbatched)

    forward = __call__

    def _forward(self, x, h0, c0, lengths):
        steps, batch = x.shape[0], x.shape[1]
        H, D = self.hidden_size, self.num_directions
        n_threads = self._kernel_threads(batch)
        h_n, c_n = np.empty_like(h0), np.empty_like(c0)
        layer_input = x
        for layer in range(self.num_layers):
            out = np.empty((steps, batch, D * H), np.float32)
            for direction in range(D):
                index = layer * D + direction
                w_ih, w_hh, s_ih, s_hh, r_ih, r_hh, bias, peep = self._layers[(layer, direction)]
                _quant.quantized_forward(
                    self.quantization, out, direction * H, h_n[index], c_n[index], layer_input,
                    h0[index], c0[index], w_ih, w_hh, s_ih, s_hh, r_ih, r_hh, bias, peep,
                    _EMPTY_INDEX if lengths is None else lengths,
                    direction == 1 or self.reverse, self.clip or 0.0, n_threads)
            layer_input = out
        return layer_input, h_n, c_n

    def train(self, mode=True):
        """Quantised modules are inference only: ``train(False)`` is a no-op, ``train()`` raises."""
        if mode:
            raise RuntimeError("QuantizedLSTM is inference only: it cannot be trained; "
                               "train the float32 LSTM and quantize it again")
        return self

    def eval(self):
        """No-op (always in eval mode); returns self."""
        return self

    def backward(self, *args, **kwargs):
        """Not available: quantised modules are inference only."""
        raise RuntimeError("QuantizedLSTM is inference only: backward is not available; "
                           "use the float32 LSTM for gradients")

    def stream(self, batch_size=1):
        """Return a stateful single-step runner, as :meth:`fastlstm.LSTM.stream`."""
        batch_size = check_int(batch_size, "batch_size", 1, 1 << 24)
        if self.bidirectional or self.reverse:
            raise ValueError("stream: expected a forward-only LSTM, got "
                             f"bidirectional={self.bidirectional}, reverse={self.reverse}")
        return QuantizedStream(self, batch_size)


class QuantizedStream(_quant.QuantStreamKernel):
    """Stateful single-step quantised inference; made by :meth:`QuantizedLSTM.stream`.

    ``y_t = s.step(x_t)`` takes x_t (B, input_size), or (input_size,) when batch_size is 1,
    and returns the last layer's h_t; ``s.state`` is (h, c), each (num_layers, B, H);
    ``s.reset()`` zeroes it. A step is one kernel call over every layer, without
    allocation; it follows ``load_state_dict`` on the module.
    """

    def __init__(self, module, batch_size):
        self.batch_size = batch_size

    @property
    def state(self):
        """(h, c), each (num_layers, B, H): the live state arrays."""
        return self.h, self.c
