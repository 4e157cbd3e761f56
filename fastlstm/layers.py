"""Keras-style layers for :class:`fastlstm.Sequential`: ``LSTM``, ``Dense``, ``Embedding``,
``Masking``, ``Dropout``, ``Bidirectional``.

Each layer is a :class:`fastlstm.modules.Module` (train mode at creation, explicit
``backward``) and a thin adapter over the PyTorch-style module doing the work
(``Dense`` over :class:`fastlstm.Linear`, ``Embedding`` over :class:`fastlstm.Embedding`,
``Dropout`` over :class:`fastlstm.Dropout`, ``LSTM`` over :class:`fastlstm.LSTM`): its
parameters are views of that module's arrays in Keras' layout (``Dense.kernel`` is the
transpose of ``Linear.weight``). It creates them when it is built: on its first call, by
``build(input_shape)``, or when added to a ``Sequential`` whose input shape is known (the
first layer's ``input_shape``: the shape of one sample, without the batch axis, as in
Keras). Building late lets a seeded ``Sequential`` seed every layer. Inputs are
batch-first: ``LSTM`` takes (batch, time, features). Initialisation follows Keras:
glorot-uniform kernels, orthogonal recurrent kernels, zero biases with the LSTM forget gate
at 1, embeddings ~ U(-0.05, 0.05). Every layer takes ``name``, ``dtype`` ("float32" or
"float64") and ``seed`` (initialisation and dropout masks).

``get_weights()`` / ``set_weights(ws)`` use Keras' layouts and names (Dense: kernel
(in, units), bias; LSTM: kernel (in, 4H), recurrent_kernel (H, 4H), bias (4H,), gates
i, f, c, o), so weights move between Keras and fastlstm models by position. The LSTM
layer has one bias, as Keras' has, so it trains as Keras' does (the wrapped
``fastlstm.LSTM`` keeps ``bias_hh`` at zero).

Masks: ``Embedding(mask_zero=True)`` and ``Masking`` mark time steps to skip, as Keras'
masks do. A mask travels as ``lengths`` (valid steps per sample, see
:meth:`Layer.output_lengths`), so only padding after a sequence's end is supported: a
mask with a masked step followed by an unmasked one raises ``ValueError``. ``Dense`` and
``Dropout`` pass it on, an ``LSTM`` consumes it (the kernels' packed-sequence
``lengths``) and passes it on only with ``return_sequences``.
"""
import re

import numpy as np

from .losses import sigmoid, softmax
from . import modules
from ._functional import dropout_mask
from ._registry import Registry
from ._threads import single_threaded_blas
from .lstm import LSTM as CoreLSTM
from .modules import Module
from .validation import as_dtype, as_real_array, check_bool, check_float, check_int


def _shape(shape, name):
    """A sample shape: tuple of positive ints or None (unknown length)."""
    if shape is None:
        return None
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(None if s is None else check_int(s, name, minimum=1) for s in shape)
    except TypeError:
        raise ValueError(f"{name}: expected a tuple of positive ints (or None), got "
                         f"{shape!r}") from None
    return shape


def _compatible(shape, built_shape):
    """Same rank and equal sizes wherever both are known."""
    return len(shape) == len(built_shape) and all(
        a is None or b is None or a == b for a, b in zip(shape, built_shape))


def lengths_from_mask(mask, name):
    """(B,) valid steps of a (B, T) boolean mask that holds up to each sequence's end;
    ValueError, naming ``name``, for a mask with holes."""
    mask = np.asarray(mask, dtype=bool)
    lengths = mask.sum(axis=1)
    holes = mask != (np.arange(mask.shape[1]) < lengths[:, None])
    if holes.any():
        sample = int(np.argwhere(holes)[0][0])
        raise ValueError(f"{name}: sample {sample} has a masked step followed by an unmasked "
                         f"one (mask {mask[sample].astype(int).tolist()}); only padding after "
                         f"the end of a sequence is supported")
    return lengths


def glorot_uniform(rng, fan_in, fan_out, shape, dtype):
    """U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def orthogonal(rng, rows, cols, dtype):
    """A (rows, cols) matrix with orthonormal columns (rows >= cols), Keras' Orthogonal.

    The QR runs on one BLAS thread: NumPy's OpenBLAS pool would collapse under competing
    load (a 2048 x 512 QR took 0.55-4.8 s on two threads against 0.15-0.26 s on one, with
    two CPU-bound processes on the 2 cores) and spin on after it, beside the kernels' team.
    """
    with single_threaded_blas():
        q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return (q * np.sign(np.diag(r))).astype(dtype)


class Layer(Module):
    """Base of the Keras-style layers.

    Subclasses implement ``_build(input_shape, rng)``, ``compute_output_shape``,
    ``forward``, ``backward`` and extend ``get_config``. ``input_shape`` excludes the batch.
    A layer over a PyTorch-style module sets ``_module`` in ``_build`` and lists its
    parameters, in Keras' order and layout, in ``_keras_parameters``.
    """

    def __init__(self, input_shape=None, name=None, dtype="float32", seed=None):
        self.built_input_shape = None
        self.name = name
        self.dtype = as_dtype(dtype)
        self.seed = None if seed is None else check_int(seed, "seed", minimum=0)
        self.input_shape = _shape(input_shape, "input_shape")
        self._module = None
        self._views = None

    def _keras_parameters(self):
        """[(name, array, grad)] views of ``_module``'s arrays in Keras' layout."""
        return []

    def _own_parameters(self):
        if self.__dict__.get("built_input_shape") is None:
            return []
        if self._views is None:   # built once: the views stay valid (loads copy in place)
            self._views = self._keras_parameters()
        return self._views

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_views"] = None   # pickled views would be copies; rebuilt from _module
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def train(self, mode=True):
        super().train(mode)
        if self._module is not None:
            self._module.train(self.training)
        return self

    @property
    def built(self):
        return self.built_input_shape is not None

    @property
    def default_name(self):
        """snake_case class name, e.g. ``"lstm"``, ``"dense"``."""
        return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", type(self).__name__).lower()

    def build(self, input_shape):
        """Create the parameters for samples of ``input_shape`` (no batch axis); once."""
        input_shape = _shape(input_shape, "input_shape")
        if self.built:
            if not _compatible(input_shape, self.built_input_shape):
                raise ValueError(f"{self.name or self.default_name}: already built for input "
                                 f"shape {self.built_input_shape}, got {input_shape}")
            return
        self._build(input_shape, np.random.default_rng(self.seed))
        self.built_input_shape = input_shape
        self.train(self.training)

    def __call__(self, x, *args, **kwargs):
        if not self.built:
            self.build(self.input_shape or np.shape(x)[1:])
        return self.forward(x, *args, **kwargs)

    #: whether ``forward`` takes ``lengths`` (the mask of its input)
    takes_lengths = False
    #: whether ``backward`` takes ``input_grad=False``, to skip the gradient of its input
    takes_input_grad = False

    def output_lengths(self, x, lengths):
        """The mask of this layer's output, as valid steps per sample (B,) or None, given
        its input ``x`` and the input's mask ``lengths``: passed on unchanged by default."""
        return lengths

    def count_params(self):
        """Number of scalar parameters (0 before the layer is built)."""
        return self.num_parameters()

    def get_weights(self):
        """Copies of the parameters in Keras' order and layout (empty before building)."""
        return [array.copy() for _, array in self.named_parameters()]

    def set_weights(self, weights):
        """Load ``get_weights()``-style arrays (Keras order and layout) into the parameters;
        nothing is written unless all of them fit."""
        self._require_built("set_weights")
        names = [name for name, _ in self.named_parameters()]
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"weights: expected {len(names)} arrays {names}, got {len(weights)}")
        self.load_state_dict(dict(zip(names, weights)))

    def _require_built(self, what):
        """Build from the constructor's ``input_shape`` if needed; ValueError without one."""
        if not self.built:
            if self.input_shape is None:
                raise ValueError(f"{self.name or self.default_name}: {what} needs the layer "
                                 f"built (call it on data, give input_shape, or add it to a "
                                 f"built Sequential)")
            self.build(self.input_shape)

    def get_config(self):
        """Constructor arguments, JSON-serialisable (``from_config`` rebuilds the layer)."""
        return {"name": self.name, "dtype": self.dtype.name, "seed": self.seed,
                "input_shape": None if self.input_shape is None else list(self.input_shape)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _check_input(self, x, expected_ndim, what):
        """Float input of rank ``expected_ndim`` (None: any rank >= 2) whose last axis
        matches the build."""
        x = as_real_array(x, "x", self.dtype)
        rank_ok = x.ndim >= 2 if expected_ndim is None else x.ndim == expected_ndim
        if not rank_ok or x.shape[-1] != self.built_input_shape[-1]:
            shape = ("batch",) + tuple("?" if s is None else s for s in self.built_input_shape)
            raise ValueError(f"x: {self.name or self.default_name} expects {what} of shape "
                             f"{shape}, got {x.shape}")
        return x

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()
                         if v is not None and k not in ("dtype", "seed"))


# activation name -> (f(z), dL/dz from dL/da and a)
_ACTIVATIONS = {
    "linear": (lambda z: z, lambda g, a: g),
    "relu": (lambda z: np.maximum(z, 0), lambda g, a: g * (a > 0)),
    "tanh": (np.tanh, lambda g, a: g * (1 - a * a)),
    "sigmoid": (sigmoid, lambda g, a: g * a * (1 - a)),
    "softmax": (softmax, lambda g, a: a * (g - np.sum(g * a, axis=-1, keepdims=True))),
}


def activation(name):
    """The activation function of a name in ``Dense``'s list."""
    return _ACTIVATIONS[name][0]


class Dense(Layer):
    """``activation(x @ kernel + bias)`` over the last axis (any rank >= 2).

    Parameters
    ----------
    units : int
    activation : None, "linear", "relu", "tanh", "sigmoid" or "softmax" (last axis)
    use_bias : bool

    ``forward(x, logits=True)`` returns the pre-activation and makes ``backward`` take the
    gradient with respect to it (``Sequential`` uses this to fuse softmax and cross-entropy).
    """

    def __init__(self, units, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.units = check_int(units, "units", minimum=1)
        activation = "linear" if activation is None else activation
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected None or one of {sorted(_ACTIVATIONS)}, got "
                             f"{activation!r}")
        self.activation = activation
        self.use_bias = check_bool(use_bias, "use_bias")

    def _build(self, input_shape, rng):
        if not input_shape or input_shape[-1] is None:
            raise ValueError(f"input_shape: Dense needs a known last axis, got {input_shape}")
        fan_in = input_shape[-1]
        kernel = glorot_uniform(rng, fan_in, self.units, (fan_in, self.units), self.dtype)
        self._module = modules.Linear(fan_in, self.units, bias=self.use_bias,
                                      dtype=self.dtype.name)
        init = {"weight": kernel.T}
        if self.use_bias:
            init["bias"] = np.zeros(self.units, self.dtype)
        self._module.load_state_dict(init)

    def _keras_parameters(self):
        linear = self._module
        params = [("kernel", linear.weight.T, linear.grads["weight"].T)]
        if self.use_bias:
            params.append(("bias", linear.bias, linear.grads["bias"]))
        return params

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, logits=False):
        # x is (..., in), kernel is (in, units), out is (..., units)
        x = self._check_input(x, None, "inputs")
        z = self._module(x)
        out = z if logits else _ACTIVATIONS[self.activation][0](z)
        self._keep((None if logits else out,))
        return out

    takes_input_grad = True

    def backward(self, grad_out, input_grad=True):
        """Accumulate dkernel, dbias; return dx (None without ``input_grad``)."""
        (out,) = self._take()
        grad = as_real_array(grad_out, "grad_out", self.dtype)
        if out is not None:
            if grad.shape != out.shape:
                raise ValueError(f"grad_out: expected shape {out.shape}, got {grad.shape}")
            grad = _ACTIVATIONS[self.activation][1](grad, out)
        return self._module.backward(grad, input_grad)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias}


class Embedding(Layer):
    """Integer indices (batch, ...) -> vectors (batch, ..., output_dim).

    Parameters
    ----------
    input_dim : int
        Vocabulary size; indices must lie in [0, input_dim).
    output_dim : int
    mask_zero : bool
        Index 0 is padding: on (batch, time) input, the steps holding 0 are masked for
        the layers after (padding after each sequence's end only).
    """

    def __init__(self, input_dim, output_dim, mask_zero=False, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = check_int(input_dim, "input_dim", minimum=1)
        self.output_dim = check_int(output_dim, "output_dim", minimum=1)
        self.mask_zero = check_bool(mask_zero, "mask_zero")

    def output_lengths(self, x, lengths):
        if not self.mask_zero:
            return lengths
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"x: Embedding(mask_zero=True) expects indices of shape (batch, "
                             f"time), got {x.shape}")
        return lengths_from_mask(x != 0, "x (Embedding mask_zero)")

    def _build(self, input_shape, rng):
        self._module = modules.Embedding(self.input_dim, self.output_dim, dtype=self.dtype.name)
        self._module.load_state_dict({"weight": rng.uniform(-0.05, 0.05, (self.input_dim,
                                                                          self.output_dim))})

    def _keras_parameters(self):
        return [("embeddings", self._module.weight, self._module.grads["weight"])]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def forward(self, x):
        self._looked_up = False
        return self._module(x)

    def lookup(self, x):
        """The lookup of ``x`` left unbuilt, for an ``LSTM`` layer to read next (see
        :meth:`fastlstm.modules.Embedding.lookup`); ``backward(None)`` follows it."""
        if not self.built:
            self.build(self.input_shape or np.shape(x)[1:])
        self._looked_up = self.training
        return self._module.lookup(x)

    def backward(self, grad_out):
        """Accumulate dembeddings; returns None (indices have no gradient).

        After :meth:`lookup`, the LSTM has added them and ``grad_out`` is None."""
        if self.__dict__.pop("_looked_up", False):
            if grad_out is not None:
                raise ValueError("grad_out: expected None after Embedding.lookup (the LSTM "
                                 "that read it adds dembeddings), got an array")
            return None
        return self._module.backward(grad_out)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim,
                "output_dim": self.output_dim, "mask_zero": self.mask_zero}


class Dropout(Layer):
    """Zero inputs with probability ``rate`` in train mode, scaling the rest by 1/(1-rate)."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_float(rate, "rate", 0.0, 1.0)

    def _build(self, input_shape, rng):
        self._module = modules.Dropout(self.rate, seed=rng)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x):
        return self._module(as_real_array(x, "x", self.dtype))

    def backward(self, grad_out):
        return self._module.backward(as_real_array(grad_out, "grad_out", self.dtype))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class Masking(Layer):
    """Mask the time steps whose features all equal ``mask_value`` (Keras' ``Masking``):
    they are set to 0 and skipped by the layers after (padding after each sequence's end
    only). Input (batch, time, features)."""

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = check_float(mask_value, "mask_value", -np.inf, np.inf)

    def _build(self, input_shape, rng):
        if len(input_shape) != 2:
            raise ValueError(f"input_shape: Masking expects (timesteps, features), got "
                             f"{input_shape}")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def _keep_steps(self, x):
        return np.any(x != self.mask_value, axis=-1)

    def output_lengths(self, x, lengths):
        return lengths_from_mask(self._keep_steps(self._check_input(x, 3, "inputs")),
                                 "x (Masking)")

    def forward(self, x):
        x = self._check_input(x, 3, "inputs")
        keep = self._keep_steps(x)[..., None].astype(self.dtype)
        self._keep((keep,))
        return x * keep

    def backward(self, grad_out):
        (keep,) = self._take()
        return as_real_array(grad_out, "grad_out", self.dtype) * keep

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}


_MERGE_MODES = ("concat", "sum", "ave")


class LSTM(Layer):
    """Keras' ``LSTM`` on :class:`fastlstm.LSTM` (batch-first).

    Parameters
    ----------
    units : int
        Hidden size H.
    return_sequences : bool
        Output every step (batch, time, H) instead of the last one (batch, H).
    return_state : bool
        Also return the final states: ``[output, h, c]`` (each (batch, H)); not usable
        inside ``Sequential``. ``backward(grad, grad_state=(grad_h, grad_c))`` then takes
        their gradients (either may be None).
    stateful : bool
        Start each call from the final state of the previous call (gradients stop at the
        call boundary: truncated BPTT). The batch size must stay the same;
        ``reset_states()`` returns to zeros.
    dropout : float
        Input dropout: the fraction of input features dropped in train mode, with one mask
        per sequence shared by all its steps (Keras' ``dropout``).
    use_bias, unit_forget_bias : bool
        Keras' bias options (the forget-gate bias starts at 1).
    go_backwards : bool
        Read the sequence from its last step to its first; with ``return_sequences`` the
        outputs come in that (reversed) order, as Keras returns them.
    activation, recurrent_activation :
        Only Keras' defaults "tanh" and "sigmoid" exist (fixed in the kernels).

    ``forward(x, lengths=None)``: ``lengths`` (B,) valid steps per sample, in [0, T] (the
    mask ``Masking`` or ``Embedding(mask_zero=True)`` gives inside ``Sequential``). Steps
    past a sequence's end are skipped, as Keras skips masked steps: the final state is
    taken at the last valid step, and with ``return_sequences`` the outputs at skipped
    steps repeat the previous output (zeros before the first valid one, as with
    ``go_backwards``; zeros throughout inside ``Bidirectional``, as Keras'
    ``zero_output_for_mask``).
    """

    _num_directions = 1
    _merge_mode = "concat"
    takes_lengths = True
    takes_input_grad = True

    def __init__(self, units, return_sequences=False, return_state=False, stateful=False,
                 dropout=0.0, use_bias=True, unit_forget_bias=True, go_backwards=False,
                 activation="tanh", recurrent_activation="sigmoid", **kwargs):
        super().__init__(**kwargs)
        if activation != "tanh":
            raise ValueError(f"activation: only 'tanh' is supported, got {activation!r}")
        if recurrent_activation != "sigmoid":
            raise ValueError(f"recurrent_activation: only 'sigmoid' is supported, got "
                             f"{recurrent_activation!r}")
        self.dropout = check_float(dropout, "dropout", 0.0, 1.0, high_open=True)
        self.units = check_int(units, "units", minimum=1)
        self.return_sequences = check_bool(return_sequences, "return_sequences")
        self.return_state = check_bool(return_state, "return_state")
        self.stateful = check_bool(stateful, "stateful")
        self.use_bias = check_bool(use_bias, "use_bias")
        self.unit_forget_bias = check_bool(unit_forget_bias, "unit_forget_bias")
        self.go_backwards = check_bool(go_backwards, "go_backwards")
        self._state = None

    @property
    def lstm(self):
        """The wrapped :class:`fastlstm.LSTM` (batch-first; None before building)."""
        return self._module

    @property
    def _suffixes(self):
        return ("", "_reverse")[:self._num_directions]

    def _build(self, input_shape, rng):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"input_shape: LSTM expects (timesteps, features) with known "
                             f"features, got {input_shape}")
        n_in, H = input_shape[-1], self.units
        self._module = CoreLSTM(n_in, H, bias=self.use_bias, batch_first=True,
                                bidirectional=self._num_directions == 2, dtype=self.dtype.name,
                                seed=int(rng.integers(2**31)), reverse=self.go_backwards)
        init = {}
        for suffix in self._suffixes:
            init[f"weight_ih_l0{suffix}"] = glorot_uniform(rng, n_in, 4 * H, (4 * H, n_in),
                                                           self.dtype)
            init[f"weight_hh_l0{suffix}"] = orthogonal(rng, 4 * H, H, self.dtype)
            if self.use_bias:
                bias = np.zeros(4 * H, self.dtype)
                if self.unit_forget_bias:
                    bias[H:2 * H] = 1
                init[f"bias_ih_l0{suffix}"] = bias
                init[f"bias_hh_l0{suffix}"] = np.zeros(4 * H, self.dtype)
        self._module.load_state_dict(init)
        self._rng = rng

    def _keras_parameters(self):
        core, params = self._module, []
        grads = core.grads
        for suffix in self._suffixes:
            for keras_name, torch_name, transpose in (
                    ("kernel", "weight_ih", True), ("recurrent_kernel", "weight_hh", True),
                    ("bias", "bias_ih", False))[:3 if self.use_bias else 2]:
                name = f"{torch_name}_l0{suffix}"
                array, grad = getattr(core, name), grads[name]
                params.append((keras_name + suffix, array.T if transpose else array,
                               grad.T if transpose else grad))
        return params

    def _upgrade_state_dict(self, state, prefix=""):
        """Fold the names of files saved when this layer exposed its ``fastlstm.LSTM``
        (``lstm.weight_ih_l0``, ..., ``bias_ih_l0`` + ``bias_hh_l0``) into Keras' names."""
        old = f"{prefix}lstm."
        for suffix in self._suffixes:
            for keras_name, torch_name in (("kernel", "weight_ih"),
                                           ("recurrent_kernel", "weight_hh")):
                key = f"{old}{torch_name}_l0{suffix}"
                if key in state:
                    state[f"{prefix}{keras_name}{suffix}"] = as_real_array(
                        state.pop(key), f"state_dict[{key!r}]", self.dtype).T
            biases = [f"{old}bias_{kind}_l0{suffix}" for kind in ("ih", "hh")]
            if all(key in state for key in biases):
                state[f"{prefix}bias{suffix}"] = sum(
                    as_real_array(state.pop(key), f"state_dict[{key!r}]", self.dtype)
                    for key in biases)

    @property
    def _width(self):
        return self.units * (self._num_directions if self._merge_mode == "concat" else 1)

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], self._width)
        return (self._width,)

    def reset_states(self):
        """Forget the carried state of a stateful layer."""
        self._state = None

    def output_lengths(self, x, lengths):
        return lengths if self.return_sequences else None

    def _check_lengths(self, lengths, B, T):
        """Valid steps per sample as an int array in [0, T], or None for all T."""
        if lengths is None:
            return None
        array = np.asarray(lengths)
        if array.shape != (B,) or array.dtype.kind not in "iu":
            raise ValueError(f"lengths: expected {B} integers (one per sample), got an array "
                             f"of shape {array.shape} and dtype {array.dtype}")
        if np.any(array < 0) or np.any(array > T):
            raise ValueError(f"lengths: expected values in [0, {T}] (the time steps), got "
                             f"{array.tolist()}")
        return None if np.all(array == T) else array.astype(np.int64)

    @property
    def reads_lookups(self):
        """Whether ``forward`` takes an :meth:`Embedding.lookup` now (no input dropout)."""
        return not (self.training and self.dropout > 0)

    def forward(self, x, lengths=None):
        # x is (B, T, in) or an embedding lookup of that shape; out is (B, T, width) or
        # (B, width)
        lookup = isinstance(x, modules.Lookup)
        if lookup and not self.reads_lookups:
            raise ValueError("x: an embedding lookup reaches an LSTM with input dropout; "
                             "pass the looked-up array")
        if not lookup:
            x = self._check_input(x, 3, "inputs")
        elif x.ndim != 3 or x.shape[-1] != self.built_input_shape[-1]:
            raise ValueError(f"x: {self.name or self.default_name} expects inputs of shape "
                             f"(batch, time, {self.built_input_shape[-1]}), got {x.shape}")
        B, T, _ = x.shape
        lengths = self._check_lengths(lengths, B, T)
        mask = None
        if self.training and self.dropout > 0:
            mask = dropout_mask(self._rng, (B, 1, x.shape[2]), self.dropout, self.dtype)
            x = x * mask
        D, H = self._num_directions, self.units
        h0 = c0 = np.zeros((D, B, H), self.dtype)
        if self.stateful and self._state is not None:
            if self._state[0].shape[1] != B:
                raise ValueError(f"x: a stateful LSTM keeps batch size "
                                 f"{self._state[0].shape[1]}, got {B} (call reset_states() "
                                 f"to change it)")
            h0, c0 = self._state
        # samples with no valid step keep their initial state and are not run
        rows = None if lengths is None or lengths.all() else np.flatnonzero(lengths)
        if rows is None:    # the module's results are fresh arrays of this call
            out, (h_n, c_n) = self._module(x, (h0, c0), lengths)
        else:
            out = np.zeros((B, T, D * H), self.dtype)
            h_n, c_n = h0.copy(), c0.copy()
            if len(rows):
                out[rows], (h_n[:, rows], c_n[:, rows]) = self._module(
                    x[rows], (h0[:, rows], c0[:, rows]), lengths[rows])
        if self.stateful:
            self._state = (h_n.copy(), c_n.copy())
        self._keep((mask, T, lengths, rows, lookup))
        y = self._keras_sequence(out, lengths) if self.return_sequences else \
            _directions_last(h_n)
        y = self._merge(y)
        if not self.return_state:
            return y
        states = []
        for d in range(self._num_directions):
            states += [h_n[d], c_n[d]]
        return [y, *states]

    def backward(self, grad_out, grad_state=None, input_grad=True):
        """Backward of the last train-mode call; returns dx (B, T, in) (None for an
        embedding lookup, whose gradient the embedding receives, and without
        ``input_grad``).

        With ``return_state``, ``grad_state`` holds the gradients of the returned states in
        their order (h, c per direction); any may be None.
        """
        mask, T, lengths, rows, lookup = self._take()
        grad = self._unmerge(as_real_array(grad_out, "grad_out", self.dtype))
        D, H = self._num_directions, self.units
        B = grad.shape[0]
        expected = (B, T, D * H) if self.return_sequences else (B, D * H)
        if grad.shape != expected:
            raise ValueError(f"grad_out: expected shape {expected[:-1] + (self._width,)}, got "
                             f"{np.shape(grad_out)}")
        grad_h = np.zeros((D, B, H), self.dtype)
        grad_c = None
        if self.return_sequences:
            grad_seq = self._keras_sequence_backward(grad, lengths)
        else:
            grad_seq = np.zeros((B, T, D * H), self.dtype)
            grad_h = np.ascontiguousarray(grad.reshape(B, D, H).transpose(1, 0, 2))
        if grad_state is not None:
            grad_h, grad_c = self._state_grads(grad_state, grad_h, B)
        if grad_c is None:
            grad_c = np.zeros_like(grad_h)
        if rows is None:
            dx, _ = self._module.backward(grad_seq, (grad_h, grad_c), input_grad)
        else:
            dx = None if lookup or not input_grad else np.zeros(
                grad_seq.shape[:2] + (self._module.input_size,), self.dtype)
            if len(rows):
                dx_rows, _ = self._module.backward(
                    grad_seq[rows], (grad_h[:, rows], grad_c[:, rows]), input_grad)
                if dx is not None:
                    dx[rows] = dx_rows
        return dx if mask is None or dx is None else dx * mask

    def _keras_sequence(self, out, lengths):
        """The kernels' outputs (B, T, D*H), aligned with the input steps and zero past each
        end, in Keras' order and with Keras' outputs at masked steps."""
        if self.go_backwards:
            return np.ascontiguousarray(out[:, ::-1])
        if lengths is None or self._num_directions == 2:
            return out
        last = np.maximum(lengths - 1, 0)
        carried = np.arange(out.shape[1]) >= lengths[:, None]       # (B, T)
        return np.where(carried[..., None], out[np.arange(len(out)), last][:, None], out)

    def _keras_sequence_backward(self, grad, lengths):
        """The adjoint of :meth:`_keras_sequence`."""
        if self.go_backwards:
            return np.ascontiguousarray(grad[:, ::-1])
        if lengths is None or self._num_directions == 2:
            return grad
        carried = np.arange(grad.shape[1]) >= lengths[:, None]
        grad_seq = np.where(carried[..., None], 0, grad).astype(self.dtype)
        has_step = lengths > 0
        samples = np.flatnonzero(has_step)
        grad_seq[samples, lengths[samples] - 1] += np.sum(
            grad[samples] * carried[samples, :, None], axis=1)
        return grad_seq

    def _state_grads(self, grad_state, grad_h, B):
        """Stack per-direction (h, c) gradients into (D, B, H) arrays, adding to grad_h."""
        D, H = self._num_directions, self.units
        if not self.return_state or len(grad_state) != 2 * D:
            raise ValueError(f"grad_state: expected {2 * D} gradients (h, c per direction) for a "
                             f"layer with return_state=True, got {len(grad_state)}")
        stacked = []
        for which, base in ((0, grad_h), (1, None)):
            total = np.zeros((D, B, H), self.dtype) if base is None else base.copy()
            for d in range(D):
                g = grad_state[2 * d + which]
                if g is not None:
                    g = as_real_array(g, "grad_state", self.dtype)
                    if g.shape != (B, H):
                        raise ValueError(f"grad_state[{2 * d + which}]: expected shape "
                                         f"{(B, H)}, got {g.shape}")
                    total[d] += g
            stacked.append(total)
        return stacked

    def _merge(self, y):
        """Combine the directions on the last axis (concat, sum or average)."""
        if self._num_directions == 1 or self._merge_mode == "concat":
            return y
        H = self.units
        total = y[..., :H] + y[..., H:]
        return total if self._merge_mode == "sum" else total * self.dtype.type(0.5)

    def _unmerge(self, grad):
        if self._num_directions == 1 or self._merge_mode == "concat":
            return grad
        if self._merge_mode == "ave":
            grad = grad * self.dtype.type(0.5)
        return np.concatenate([grad, grad], axis=-1)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "return_sequences": self.return_sequences, "return_state": self.return_state,
                "stateful": self.stateful, "dropout": self.dropout, "use_bias": self.use_bias,
                "unit_forget_bias": self.unit_forget_bias, "go_backwards": self.go_backwards}


def _directions_last(h_n):
    """(D, B, H) final states -> (B, D*H), directions concatenated [forward, reverse]."""
    D, B, H = h_n.shape
    return np.ascontiguousarray(h_n.transpose(1, 0, 2).reshape(B, D * H))


class Bidirectional(Layer):
    """Run an ``LSTM`` layer over the sequence in both directions (Keras' ``Bidirectional``).

    Parameters
    ----------
    layer : LSTM
        Its configuration is used (the instance itself is not trained).
    merge_mode : "concat" (default), "sum" or "ave"
        How the forward and reverse outputs combine on the last axis. The reverse outputs of
        ``return_sequences=True`` are aligned with the input steps; the last output of the
        reverse direction is its state after reading the whole sequence backwards.
    """

    def __init__(self, layer, merge_mode="concat", **kwargs):
        if not isinstance(layer, LSTM) or isinstance(layer, Bidirectional):
            raise TypeError(f"layer: expected a fastlstm.layers.LSTM, got {type(layer).__name__}")
        if layer.go_backwards:
            raise ValueError("layer: Bidirectional reads both directions itself; expected an "
                             "LSTM with go_backwards=False, got go_backwards=True")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of {_MERGE_MODES}, got {merge_mode!r}")
        config = layer.get_config()
        super().__init__(**{"dtype": config["dtype"], "seed": config["seed"],
                            "input_shape": config["input_shape"], **kwargs})
        config.update(input_shape=None, dtype=self.dtype.name, seed=self.seed)
        self.merge_mode = merge_mode
        self.layer = LSTM.from_config(config)
        self.layer._num_directions = 2
        self.layer._merge_mode = merge_mode

    def _build(self, input_shape, rng):
        self.layer.seed = int(rng.integers(2**31)) if self.seed is not None else None
        self.layer.build(input_shape)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    takes_lengths = True

    def output_lengths(self, x, lengths):
        return self.layer.output_lengths(x, lengths)

    def forward(self, x, lengths=None):
        return self.layer(x, lengths)

    takes_input_grad = True

    def backward(self, grad_out, grad_state=None, input_grad=True):
        return self.layer.backward(grad_out, grad_state, input_grad)

    def reset_states(self):
        self.layer.reset_states()

    def get_config(self):
        inner = self.layer.get_config()
        inner.update(name=None, seed=None)
        return {**super().get_config(), "layer": {"class_name": "LSTM", "config": inner},
                "merge_mode": self.merge_mode}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer = deserialize(config.pop("layer"))
        return cls(layer, **config)


_REGISTRY = Registry("layer", Layer, [LSTM, Dense, Embedding, Masking, Dropout,
                                      Bidirectional])


def serialize(layer):
    """``{"class_name", "config"}`` of a built-in layer (TypeError for other classes)."""
    config = _REGISTRY.serialize(layer)
    if config is None:
        raise TypeError(f"layer: cannot serialize {type(layer).__qualname__}; only "
                        f"{sorted(_REGISTRY.classes)} are known")
    return config


def deserialize(config):
    """The layer :func:`serialize` described."""
    return _REGISTRY.deserialize(config)
