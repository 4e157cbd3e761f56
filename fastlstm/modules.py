"""PyTorch-style modules: the ``Module`` base, ``Linear``, ``Embedding`` and ``Dropout``.

Every module follows the protocol of :class:`fastlstm.LSTM`:

- parameters are NumPy arrays held as attributes; ``named_parameters()`` lists them as
  ``(name, array)`` pairs, ``grads`` maps the same names to persistent gradient arrays that
  ``backward`` accumulates into and ``zero_grad()`` zeroes in place;
- ``y = m(x)`` (or ``m.forward(x)``) in train mode keeps what ``backward`` needs;
  ``dx = m.backward(grad_y)`` consumes it (one backward per train-mode call); eval-mode
  calls keep nothing;
- ``state_dict()`` returns copies, ``load_state_dict(d)`` copies values into the existing
  arrays, so references held by optimizers stay valid.

A model is a ``Module`` subclass whose attributes are modules (``fl.LSTM`` included) or
lists of modules; ``named_parameters``, ``grads``, ``zero_grad``, ``train``/``eval`` and the
state dict recurse into them with dotted names (``"fc.weight"``, ``"lstm.weight_ih_l0"``).
Its ``forward`` and ``backward`` are written by hand, backward mirroring forward.
"""
from typing import NamedTuple

import numpy as np

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


def as_index_array(x, size, name="x"):
    """``x`` as int64 indices in [0, size); integral floats are accepted (Keras feeds them)."""
    array = np.asarray(x)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise TypeError(f"{name}: expected integer indices, got non-integral floats")
    elif array.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer indices, got dtype {array.dtype}")
    indices = array.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        raise ValueError(f"{name}: expected indices in [0, {size}), got values in "
                         f"[{indices.min()}, {indices.max()}]")
    return indices


def is_module(obj):
    """True for objects following the module protocol (``Module`` and ``fl.LSTM``)."""
    if isinstance(obj, Module):
        return True
    if isinstance(obj, type):
        return False
    return all(callable(getattr(obj, attr, None))
               for attr in ("named_parameters", "zero_grad", "train", "eval", "backward"))


class Module:
    """Base class of the PyTorch-style modules (see the module docstring for the protocol).

    Subclasses that own parameters list their attribute names in ``_param_names`` and
    create them with ``_add_parameter``; composite modules just assign child modules to
    attributes. ``forward`` and ``backward`` are the subclass's.
    """

    training = True
    _param_names = ()

    def _add_parameter(self, name, array):
        """Hold ``array`` as parameter attribute ``name`` with a zeroed gradient array."""
        if not hasattr(self, "_grads"):
            self._grads = {}
            self._param_names = []
        setattr(self, name, array)
        self._param_names.append(name)
        self._grads[name] = np.zeros_like(array)

    def named_children(self):
        """List of (name, module) of the direct submodules, in attribute order."""
        children = []
        for attr, value in vars(self).items():
            if attr.startswith("_"):
                continue
            if is_module(value):
                children.append((attr, value))
            elif isinstance(value, (list, tuple)) and value and all(map(is_module, value)):
                children.extend((f"{attr}.{i}", child) for i, child in enumerate(value))
        return children

    def named_parameters(self):
        """List of (dotted name, array): own parameters first, then each child's."""
        params = [(name, getattr(self, name)) for name in self._param_names]
        for prefix, child in self.named_children():
            params.extend((f"{prefix}.{name}", array) for name, array in child.named_parameters())
        seen, unique = set(), []
        for name, array in params:  # a module shared by two attributes counts once
            if id(array) not in seen:
                seen.add(id(array))
                unique.append((name, array))
        return unique

    @property
    def grads(self):
        """Dict dotted name -> persistent gradient array, keyed like ``named_parameters()``."""
        grads = dict(getattr(self, "_grads", {}))
        for prefix, child in self.named_children():
            grads.update((f"{prefix}.{name}", g) for name, g in child.grads.items())
        return {name: grads[name] for name, _ in self.named_parameters()}

    def parameters(self):
        """List of :class:`Parameter` (name, data, grad), the input optimizers expect."""
        grads = self.grads
        return [Parameter(name, array, grads[name]) for name, array in self.named_parameters()]

    def zero_grad(self):
        """Zero every gradient array in place."""
        for g in getattr(self, "_grads", {}).values():
            g[...] = 0
        for _, child in self.named_children():
            child.zero_grad()

    def train(self, mode=True):
        """Set train mode (``mode=True``) or eval mode here and in every child; returns self."""
        self.training = check_bool(mode, "mode")
        for _, child in self.named_children():
            if mode:
                child.train()
            else:
                child.eval()
        return self

    def eval(self):
        """Set eval mode (calls keep nothing for backward); returns self."""
        return self.train(False)

    def state_dict(self):
        """Dict dotted name -> copy of each parameter."""
        return {name: array.copy() for name, array in self.named_parameters()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy values from a mapping of array-likes (NumPy, torch tensors) into the parameters.

        The existing arrays are updated in place. With ``strict``, missing and unexpected
        names raise ``ValueError``; a shape mismatch always does.
        """
        params = dict(self.named_parameters())
        if strict:
            missing = sorted(set(params) - set(state_dict))
            unexpected = sorted(set(state_dict) - set(params))
            if missing or unexpected:
                raise ValueError(f"state_dict: missing keys {missing}, unexpected keys "
                                 f"{unexpected}")
        for name, array in params.items():
            if name not in state_dict:
                continue
            value = as_real_array(state_dict[name], f"state_dict[{name!r}]", array.dtype)
            if value.shape != array.shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {array.shape}, got "
                                 f"{value.shape}")
            array[...] = value
        weights_changed()

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
        saved = getattr(self, "_saved", None)
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
        out = x @ self.weight.T
        if self.has_bias:
            out += self.bias
        self._keep(x)
        return out

    @single_threaded_blas()
    def backward(self, grad_out):
        """Accumulate dweight, dbias; return dx, shaped like the kept ``x``."""
        x = self._take()
        grad_out = as_real_array(grad_out, "grad_out", self.dtype)
        if grad_out.shape != x.shape[:-1] + (self.out_features,):
            raise ValueError(f"grad_out: expected shape {x.shape[:-1] + (self.out_features,)}, "
                             f"got {grad_out.shape}")
        g_rows = grad_out.reshape(-1, self.out_features)
        self._grads["weight"] += g_rows.T @ x.reshape(-1, self.in_features)
        if self.has_bias:
            self._grads["bias"] += g_rows.sum(axis=0)
        return grad_out @ self.weight

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
        indices = as_index_array(indices, self.num_embeddings, "indices")
        self._keep(indices)
        return self.weight[indices]

    def backward(self, grad_out):
        """Accumulate dweight (rows of the kept indices); returns None."""
        indices = self._take()
        grad_out = as_real_array(grad_out, "grad_out", self.dtype)
        if grad_out.shape != indices.shape + (self.embedding_dim,):
            raise ValueError(f"grad_out: expected shape {indices.shape + (self.embedding_dim,)}, "
                             f"got {grad_out.shape}")
        rows = grad_out.reshape(-1, self.embedding_dim)
        flat = indices.reshape(-1)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            rows, flat = rows[keep], flat[keep]
        # dweight[flat[i]] += rows[i]: sort by index and sum each run (np.add.at is 5x slower)
        order = np.argsort(flat, kind="stable")
        flat = flat[order]
        starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]]) if flat.size else flat
        if flat.size:
            self._grads["weight"][flat[starts]] += np.add.reduceat(rows[order], starts, axis=0)
        return None

    def extra_repr(self):
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{padding}, dtype={self.dtype.name}"


class Dropout(Module):
    """Zero each element with probability ``p`` in train mode, scaling the rest by 1/(1-p).

    Eval mode is the identity. ``seed`` seeds the mask generator.
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
        mask = dropout_mask(self._rng, x.shape, self.p, x.dtype)
        self._keep(mask)
        return x * mask

    def backward(self, grad_out):
        mask = self._take()
        grad_out = np.asarray(grad_out)
        if grad_out.shape != mask.shape:
            raise ValueError(f"grad_out: expected shape {mask.shape}, got {grad_out.shape}")
        return grad_out * mask

    def extra_repr(self):
        return f"p={self.p}"


def dropout_mask(rng, shape, rate, dtype):
    """Inverted-dropout mask: 0 with probability ``rate``, else 1/(1-rate)."""
    if rate >= 1.0:
        return np.zeros(shape, dtype)
    keep = rng.random(shape) >= rate
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))
