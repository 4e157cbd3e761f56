"""PyTorch-style modules: the ``Module`` base, ``Linear``, ``Embedding`` and ``Dropout``.

Every module, :class:`fastlstm.LSTM` and the Keras-style layers included, follows one
protocol, PyTorch's:

- parameters are NumPy arrays reachable as attributes; ``named_parameters()`` lists them
  as ``(name, array)`` pairs, ``parameters()`` as :class:`Parameter` (name, data, grad)
  in the same order, and ``grads`` maps the same names to persistent gradient arrays that
  ``backward`` accumulates into and ``zero_grad()`` zeroes in place;
- ``y = m(x)`` (or ``m.forward(x)``) in train mode keeps what ``backward`` needs;
  ``dx = m.backward(grad_y)`` consumes it (one backward per train-mode call); eval-mode
  calls keep nothing;
- ``state_dict()`` returns copies; ``load_state_dict(d)`` checks every entry before it
  writes any (a bad entry leaves the module untouched), then copies the values into the
  existing arrays, so references held by optimizers stay valid. Assigning to a parameter
  attribute (``m.weight = w``) loads it the same way.

A model is a ``Module`` subclass whose attributes are modules or lists of modules;
``named_parameters``, ``grads``, ``zero_grad``, ``train``/``eval`` and the state dict
recurse into them with dotted names (``"fc.weight"``, ``"lstm.weight_ih_l0"``). Its
``forward`` and ``backward`` are written by hand, backward mirroring forward.
"""
import types
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from . import _functional as F
from ._kernels.lstm import weights_changed
from ._threads import single_threaded_blas
from .validation import as_dtype, as_real_array, check_bool, check_float, check_int


class Parameter(NamedTuple):
    """One parameter as optimizers see it: ``name``, its ``data`` array and its ``grad`` array.

    Both arrays are the module's own (updating ``data`` in place updates the module), so
    ``for p in model.parameters(): p.data -= lr * p.grad`` is plain SGD.
    """

    name: str
    data: np.ndarray
    grad: np.ndarray


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` skipped, as PyTorch returns it."""

    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every module (see the module docstring for the protocol).

    Subclasses that own parameters create them with ``_add_parameter``; composite modules
    just assign child modules to attributes. ``forward`` and ``backward`` are the
    subclass's. A module that presents another module's arrays in another layout (the
    Keras-style layers) overrides ``_own_parameters``.
    """

    training = True

    def _add_parameter(self, name, array, grad=None):
        """Hold ``array`` as parameter ``name`` with ``grad`` (default: zeros) as its gradient."""
        if "_params" not in self.__dict__:
            object.__setattr__(self, "_params", {})
            object.__setattr__(self, "_grads", {})
        self._params[name] = array
        self._grads[name] = np.zeros_like(array) if grad is None else grad

    def _own_parameters(self):
        """[(name, array, grad)] of the parameters held here (children's excluded)."""
        params = self.__dict__.get("_params", {})
        return [(name, array, self._grads[name]) for name, array in params.items()]

    def __getattr__(self, name):
        if not name.startswith("_"):
            for own, array, _ in self._own_parameters():
                if own == name:
                    return array
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if not name.startswith("_") and any(own == name for own, _, _ in self._own_parameters()):
            self.load_state_dict({name: value}, strict=False)
        else:
            object.__setattr__(self, name, value)

    def named_children(self):
        """List of (name, module) of the direct submodules, in attribute order."""
        children = []
        for attr, value in vars(self).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, Module):
                children.append((attr, value))
            elif isinstance(value, (list, tuple)) and value and all(
                    isinstance(v, Module) for v in value):
                children.extend((f"{attr}.{i}", child) for i, child in enumerate(value))
        return children

    def _members(self, prefix="", seen=None):
        """(dotted name, array, grad) of every parameter, each module visited once."""
        seen = set() if seen is None else seen
        if id(self) in seen:
            return
        seen.add(id(self))
        for name, array, grad in self._own_parameters():
            yield prefix + name, array, grad
        for child_name, child in self.named_children():
            yield from child._members(f"{prefix}{child_name}.", seen)

    def named_parameters(self):
        """List of (dotted name, live array): own parameters first, then each child's."""
        return [(name, array) for name, array, _ in self._members()]

    def parameters(self):
        """List of :class:`Parameter` (name, data, grad), as ``named_parameters()`` orders them."""
        return [Parameter(name, array, grad) for name, array, grad in self._members()]

    @property
    def grads(self):
        """Read-only mapping dotted name -> persistent gradient array, keyed like
        ``named_parameters()``. Write into the arrays (``m.grads[k][...] = g``); the arrays
        themselves cannot be replaced, so the kernels always get the shapes they expect."""
        return types.MappingProxyType({name: grad for name, _, grad in self._members()})

    def zero_grad(self):
        """Zero every gradient array in place."""
        for _, _, grad in self._members():
            grad[...] = 0

    def train(self, mode=True):
        """Set train mode (``mode=True``) or eval mode here and in every child; returns self."""
        self.training = check_bool(mode, "mode")
        for _, child in self.named_children():
            child.train(self.training)
        return self

    def eval(self):
        """Set eval mode (calls keep nothing for backward); returns self."""
        return self.train(False)

    def state_dict(self):
        """Dict dotted name -> copy of each parameter."""
        return {name: array.copy() for name, array in self.named_parameters()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy values from a mapping of array-likes (NumPy, torch tensors) into the parameters.

        Every entry is checked before any is written: with ``strict``, missing and
        unexpected names raise ``ValueError``; a shape mismatch always does, and so do
        values that are not real numbers (``TypeError``). The existing arrays are updated
        in place. Returns the skipped names as ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, Mapping) and not (
                hasattr(state_dict, "keys") and hasattr(state_dict, "__getitem__")):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got "
                            f"{type(state_dict).__name__}")
        state = {name: state_dict[name] for name in state_dict.keys()}
        self._upgrade_state_dict(state)
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(map(str, set(state) - set(params)))
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict: missing keys {missing}, unexpected keys "
                             f"{unexpected} for {type(self).__name__}")
        converted = {}
        for name, array in params.items():
            if name in state:
                value = as_real_array(state[name], f"state_dict[{name!r}]", array.dtype)
                if value.shape != array.shape:
                    raise ValueError(f"state_dict[{name!r}]: expected shape {array.shape}, got "
                                     f"{value.shape}")
                converted[name] = value
        for name, value in converted.items():
            np.copyto(params[name], value)
        weights_changed()
        return IncompatibleKeys(missing, unexpected)

    def _upgrade_state_dict(self, state, prefix=""):
        """Rename, in place, entries of ``state`` saved by older versions of this module.

        ``prefix`` is this module's dotted name in ``state``; children are asked in turn.
        """
        for name, child in self.named_children():
            child._upgrade_state_dict(state, f"{prefix}{name}.")

    def num_parameters(self):
        """Total number of scalar parameters."""
        return sum(array.size for _, array in self.named_parameters())

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def backward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define backward")

    def _keep(self, saved):
        """Store what backward needs, in train mode only (eval calls leave it untouched)."""
        if self.training:
            self._saved = saved

    def _take(self):
        """Return and forget what the last train-mode call kept; RuntimeError if nothing."""
        saved = self.__dict__.get("_saved")
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward: no train-mode call to "
                               f"differentiate (call the module in train mode first; each call "
                               f"supports one backward)")
        self._saved = None
        return saved

    def extra_repr(self):
        """The constructor arguments shown by ``repr``."""
        return ""

    def __repr__(self):
        children = self.named_children()
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in children:
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return "\n".join(lines) + "\n)"


def _check_last_dim(x, size, name):
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{name}: expected shape (..., {size}), got {x.shape}")


class Linear(Module):
    """``y = x W^T + b`` over the last axis, as PyTorch's ``nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    dtype : "float32" or "float64"
    seed : int or None
        Seeds PyTorch's init: weight and bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features)).

    ``weight`` is (out_features, in_features), ``bias`` (out_features,). ``x`` is
    (..., in_features); the result is (..., out_features). ``forward`` and ``backward`` run
    their NumPy products with the OpenBLAS pools of NumPy and SciPy held to one thread (a
    few microseconds per call), so they wake no pool that spins against fastlstm's threads.
    """

    def __init__(self, in_features, out_features, bias=True, dtype="float32", seed=None):
        self.in_features = check_int(in_features, "in_features", minimum=1)
        self.out_features = check_int(out_features, "out_features", minimum=1)
        self.dtype = as_dtype(dtype)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        self._add_parameter("weight", rng.uniform(-bound, bound, (out_features, in_features))
                            .astype(self.dtype))
        self.has_bias = check_bool(bias, "bias")
        if self.has_bias:
            self._add_parameter("bias", rng.uniform(-bound, bound, out_features).astype(self.dtype))

    @single_threaded_blas()
    def forward(self, x):
        # x is (..., in), weight is (out, in), out is (..., out)
        x = as_real_array(x, "x", self.dtype)
        _check_last_dim(x, self.in_features, "x")
        self._keep(x)
        return F.linear(x, self.weight, self.bias if self.has_bias else None)

    @single_threaded_blas()
    def backward(self, grad_out, input_grad=True):
        """Accumulate dweight, dbias; return dx, shaped like the kept ``x`` (None without
        ``input_grad``: the input needs no gradient)."""
        input_grad = check_bool(input_grad, "input_grad")
        x = self._take()
        grad_out = as_real_array(grad_out, "grad_out", self.dtype)
        if grad_out.shape != x.shape[:-1] + (self.out_features,):
            raise ValueError(f"grad_out: expected shape {x.shape[:-1] + (self.out_features,)}, "
                             f"got {grad_out.shape}")
        return F.linear_backward(grad_out, x, self.weight, self._grads["weight"],
                                 self._grads["bias"] if self.has_bias else None, input_grad)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.has_bias}, dtype={self.dtype.name}")


class Embedding(Module):
    """Lookup table, as PyTorch's ``nn.Embedding``: indices (...) -> vectors (..., dim).

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    padding_idx : int or None
        This row starts at zero and receives no gradient.
    dtype : "float32" or "float64"
    seed : int or None
        Seeds PyTorch's init: weight ~ N(0, 1).

    ``weight`` is (num_embeddings, embedding_dim). ``backward`` accumulates dweight and
    returns None (indices have no gradient).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype="float32",
                 seed=None):
        num_embeddings = check_int(num_embeddings, "num_embeddings", minimum=1)
        embedding_dim = check_int(embedding_dim, "embedding_dim", minimum=1)
        if padding_idx is not None:
            if not isinstance(padding_idx, (int, np.integer)) or not (
                    -num_embeddings <= padding_idx < num_embeddings):
                raise ValueError(f"padding_idx: expected an int in [-{num_embeddings}, "
                                 f"{num_embeddings}) or None, got {padding_idx!r}")
            padding_idx = int(padding_idx) % num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.dtype = as_dtype(dtype)
        weight = np.random.default_rng(seed).standard_normal((num_embeddings, embedding_dim))
        if padding_idx is not None:
            weight[padding_idx] = 0
        self._add_parameter("weight", weight.astype(self.dtype))

    def forward(self, indices):
        indices = F.as_index_array(indices, self.num_embeddings, "indices")
        self._keep(indices)
        return self.weight[indices]

    def lookup(self, indices):
        """``weight[indices]`` left unbuilt, for a :class:`fastlstm.LSTM` to read.

        The LSTM projects each row of ``weight`` once instead of each looked-up row, and adds
        dweight itself (its ``backward`` returns None); keeps nothing here.
        """
        return Lookup(self, F.as_index_array(indices, self.num_embeddings, "indices"))

    def backward(self, grad_out):
        """Accumulate dweight (rows of the kept indices); returns None."""
        indices = self._take()
        grad_out = as_real_array(grad_out, "grad_out", self.dtype)
        if grad_out.shape != indices.shape + (self.embedding_dim,):
            raise ValueError(f"grad_out: expected shape {indices.shape + (self.embedding_dim,)}, "
                             f"got {grad_out.shape}")
        F.embedding_backward(self._grads["weight"], indices, grad_out, self.padding_idx)
        return None

    def extra_repr(self):
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{padding}, dtype={self.dtype.name}"


class Lookup:
    """``embedding.weight[indices]``, not yet built (:meth:`Embedding.lookup`).

    Array-like: ``shape``, ``dtype``, ``np.asarray`` builds it, and indexing the leading
    axes selects indices. Gradients reach ``embedding.grads["weight"]`` through
    :meth:`add_grad` (per table row) or :meth:`add_grad_rows` (per looked-up row).
    """

    def __init__(self, embedding, indices):
        self.embedding, self.indices = embedding, indices

    @property
    def shape(self):
        return self.indices.shape + (self.embedding.embedding_dim,)

    @property
    def ndim(self):
        return self.indices.ndim + 1

    @property
    def dtype(self):
        return self.embedding.weight.dtype

    def __getitem__(self, key):
        return Lookup(self.embedding, self.indices[key])

    def __array__(self, dtype=None, copy=None):
        rows = self.embedding.weight[self.indices]
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def add_grad(self, grad_table):
        """Add dL/dweight (num_embeddings, dim), skipping the padding row."""
        grad = self.embedding.grads["weight"]
        padding = self.embedding.padding_idx
        if padding is None:
            grad += grad_table
        else:
            keep = np.arange(len(grad)) != padding
            grad[keep] += grad_table[keep]

    def add_grad_rows(self, grad_rows):
        """Add dL/d(the looked-up rows), shaped like ``self``."""
        F.embedding_backward(self.embedding.grads["weight"], self.indices, grad_rows,
                             self.embedding.padding_idx)


class Dropout(Module):
    """Zero each element with probability ``p`` in train mode, scaling the rest by 1/(1-p).

    Eval mode is the identity. ``seed`` (an int or a ``numpy.random.Generator``) seeds the
    mask generator.
    """

    def __init__(self, p=0.5, seed=None):
        self.p = check_float(p, "p", 0.0, 1.0)
        self._rng = np.random.default_rng(seed)

    def forward(self, x):
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"x: expected a float array, got dtype {x.dtype}")
        if not self.training:
            return x
        mask = F.dropout_mask(self._rng, x.shape, self.p, x.dtype) if self.p > 0 else None
        self._keep((mask, x.shape))
        return x if mask is None else x * mask

    def backward(self, grad_out):
        mask, shape = self._take()
        grad_out = np.asarray(grad_out)
        if grad_out.shape != shape:
            raise ValueError(f"grad_out: expected shape {shape}, got {grad_out.shape}")
        return grad_out if mask is None else grad_out * mask

    def extra_repr(self):
        return f"p={self.p}"
