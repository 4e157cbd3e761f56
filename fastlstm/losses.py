"""Losses by their Keras names, each returning its value and its gradient.

``value, grad = loss(y_true, y_pred)`` (Keras argument order: targets first): ``value`` is
a Python float, the mean over the batch (and over time steps for sequence outputs);
``grad`` is d value / d y_pred, shaped like ``y_pred``. ``loss.value(y_true, y_pred)``
returns the value alone.

====================================  ========================================  ============
string                                class                                     reduction
====================================  ========================================  ============
``mse``, ``mean_squared_error``       :class:`MeanSquaredError`                 mean of all
``mae``, ``mean_absolute_error``      :class:`MeanAbsoluteError`                mean of all
``binary_crossentropy``               :class:`BinaryCrossentropy`               mean of all
``categorical_crossentropy``          :class:`CategoricalCrossentropy`          sum over
                                                                                classes, mean
                                                                                over the rest
``sparse_categorical_crossentropy``   :class:`SparseCategoricalCrossentropy`    same
====================================  ========================================  ============

The cross-entropies take probabilities (clipped to [1e-7, 1 - 1e-7], as Keras does, with
zero gradient where clipped) or, with ``from_logits=True``, logits (exact log-sum-exp
maths, no clipping). :func:`for_logits` gives the logits version that ``Sequential`` uses
when the last ``Dense`` has a softmax (or sigmoid) activation: the softmax and the
cross-entropy are then differentiated together, ``grad = softmax(z) - y``, which stays
accurate where the probabilities saturate.

Regression targets shaped like ``y_pred`` without its last axis of size 1 (``y`` of shape
(n,) for a ``Dense(1)`` output (n, 1)) are accepted. Sparse targets are integer class
indices shaped like ``y_pred`` without its class axis (or with a trailing axis of 1).
"""
import math

import numpy as np

from ._functional import as_index_array
from ._kernels import layers as _layers
from ._kernels import lstm as _lstm
from ._threads import get_num_threads
from ._registry import Registry
from .validation import as_real_array, check_bool

EPSILON = 1e-7


def sigmoid(z):
    """Logistic function through tanh: never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _shifted_exp(z):
    """(shifted, e, total) over the last axis: z minus its max (for stability), exp of
    that, and its sum (keepdims); log_softmax = shifted - log(total), softmax = e / total."""
    shifted = z - z.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return shifted, e, e.sum(axis=-1, keepdims=True)


def log_softmax(z):
    """log(softmax(z)) over the last axis, shifted by the max for stability."""
    shifted, _, total = _shifted_exp(z)
    return shifted - np.log(total)


def softmax(z):
    """softmax(z) over the last axis."""
    _, e, total = _shifted_exp(z)
    return e / total


def as_prediction(y_pred):
    """``y_pred`` as a float array (its own float dtype, else float64)."""
    y_pred = np.asarray(y_pred)
    dtype = y_pred.dtype if y_pred.dtype.kind == "f" else np.dtype(np.float64)
    return as_real_array(y_pred, "y_pred", dtype)


def dense_targets(y_true, y_pred):
    """``y_true`` as floats shaped like ``y_pred`` (a missing trailing axis of 1 is added)."""
    y_true = as_real_array(y_true, "y_true", y_pred.dtype)
    if y_true.shape != y_pred.shape:
        if y_pred.shape[-1:] == (1,) and y_true.shape == y_pred.shape[:-1]:
            return y_true.reshape(y_pred.shape)
        raise ValueError(f"y_true: expected shape {y_pred.shape} (that of y_pred), got "
                         f"{y_true.shape}")
    return y_true


def sparse_targets(y_true, y_pred):
    """Class indices shaped like ``y_pred`` without its class axis, checked in range."""
    y_true = np.asarray(y_true)
    if y_true.shape == y_pred.shape[:-1] + (1,):
        y_true = y_true.reshape(y_pred.shape[:-1])
    if y_true.shape != y_pred.shape[:-1]:
        raise ValueError(f"y_true: expected class indices of shape {y_pred.shape[:-1]} (y_pred "
                         f"without its class axis), got {y_true.shape}")
    return as_index_array(y_true, y_pred.shape[-1], "y_true")


def row_weights(sample_weight, rows_shape, dtype):
    """``sample_weight`` broadcast to the rows' shape: given per row, or per sample (its
    shape a prefix of the rows' shape, or that with a trailing axis of 1)."""
    weight = as_real_array(sample_weight, "sample_weight", dtype)
    if weight.shape[-1:] == (1,) and weight.shape[:-1] == rows_shape[:weight.ndim - 1]:
        weight = weight.reshape(weight.shape[:-1])
    if weight.shape != rows_shape[:weight.ndim] or weight.ndim == 0 and rows_shape:
        raise ValueError(f"sample_weight: expected shape {rows_shape[:1]} (one weight per "
                         f"sample) or {rows_shape}, got {weight.shape}")
    return np.broadcast_to(weight.reshape(weight.shape + (1,) * (len(rows_shape)
                                                                 - weight.ndim)), rows_shape)


class Loss:
    """Base class: subclasses define ``_rows(y_true, y_pred) -> (losses, grad)``, the loss
    of each row (``y_pred`` without its last axis) and d losses / d y_pred; one whose
    kernel can divide the gradient on the way also overrides ``_mean_rows``."""

    name = "loss"

    def __call__(self, y_true, y_pred, sample_weight=None):
        """(value, grad): the mean of the row losses, each weighted by ``sample_weight``.

        ``sample_weight`` (None: all 1) is shaped like the rows or like their leading axes
        (one weight per sample); as in Keras, the weighted sum is divided by the number of
        rows, not by the sum of the weights.
        """
        y_pred = as_prediction(y_pred)
        n = max(math.prod(y_pred.shape[:-1]), 1)     # the rows
        if sample_weight is None:
            rows, grad = self._mean_rows(y_true, y_pred, n)
            return float(np.sum(rows) / n), grad
        rows, grad = self._rows(y_true, y_pred)
        weight = row_weights(sample_weight, rows.shape, y_pred.dtype)
        return float(np.sum(rows * weight) / n), grad * (weight / n)[..., None]

    def _mean_rows(self, y_true, y_pred, n):
        """(losses, grad / n): ``_rows`` with the gradient of the mean over n rows."""
        rows, grad = self._rows(y_true, y_pred)
        return rows, grad / n

    def value(self, y_true, y_pred, sample_weight=None):
        """The loss value alone (a float)."""
        return self(y_true, y_pred, sample_weight)[0]

    def get_config(self):
        """Constructor arguments, JSON-serialisable."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class MeanSquaredError(Loss):
    """mean((y_pred - y_true)**2)."""

    name = "mean_squared_error"

    def _rows(self, y_true, y_pred):
        diff = y_pred - dense_targets(y_true, y_pred)
        return np.mean(diff * diff, axis=-1), diff * (2.0 / max(diff.shape[-1], 1))


class MeanAbsoluteError(Loss):
    """mean(``|y_pred - y_true|``); the gradient at 0 is 0."""

    name = "mean_absolute_error"

    def _rows(self, y_true, y_pred):
        diff = y_pred - dense_targets(y_true, y_pred)
        return np.mean(np.abs(diff), axis=-1), np.sign(diff) / max(diff.shape[-1], 1)


class _CrossEntropy(Loss):
    def __init__(self, from_logits=False):
        self.from_logits = check_bool(from_logits, "from_logits")

    def get_config(self):
        return {"from_logits": self.from_logits}


def clip_probabilities(p):
    """(p clipped to [eps, 1 - eps], 1.0 where p was inside else 0.0)."""
    clipped = np.clip(p, EPSILON, 1.0 - EPSILON)
    return clipped, (clipped == p).astype(p.dtype)


class BinaryCrossentropy(_CrossEntropy):
    """-mean(y log p + (1 - y) log(1 - p)) for targets in [0, 1]."""

    name = "binary_crossentropy"

    def _rows(self, y_true, y_pred):
        y = dense_targets(y_true, y_pred)
        n = max(y.shape[-1], 1)
        if self.from_logits:
            z = y_pred
            losses = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
            return np.mean(losses, axis=-1), (sigmoid(z) - y) / n
        p, inside = clip_probabilities(y_pred)
        losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
        return np.mean(losses, axis=-1), inside * (p - y) / (p * (1 - p)) / n


class CategoricalCrossentropy(_CrossEntropy):
    """-sum(y log p) over the class (last) axis, averaged over the other axes."""

    name = "categorical_crossentropy"

    def _rows(self, y_true, y_pred):
        y = dense_targets(y_true, y_pred)
        if self.from_logits:
            log_p = log_softmax(y_pred)
            grad = np.exp(log_p) * y.sum(axis=-1, keepdims=True) - y
            return -np.sum(y * log_p, axis=-1), grad
        p, inside = clip_probabilities(y_pred)
        return -np.sum(y * np.log(p), axis=-1), -inside * y / p


class SparseCategoricalCrossentropy(_CrossEntropy):
    """Categorical cross-entropy with integer class targets."""

    name = "sparse_categorical_crossentropy"

    def _rows(self, y_true, y_pred):
        return self._mean_rows(y_true, y_pred, 1)

    def _mean_rows(self, y_true, y_pred, n):
        target = sparse_targets(y_true, y_pred)
        rows = y_pred.reshape(-1, y_pred.shape[-1])
        if self.from_logits:   # one pass: log_softmax and softmax from one exp per logit
            logits = np.ascontiguousarray(rows, dtype=np.promote_types(rows.dtype, np.float32))
            losses, grad = np.empty(logits.shape[0], logits.dtype), np.empty_like(logits)
            _layers.sparse_softmax_cross_entropy(losses, grad, logits,
                                                 np.ascontiguousarray(target.reshape(-1)),
                                                 _lstm.packed_isa(), get_num_threads(), n)
            return (losses.reshape(target.shape).astype(y_pred.dtype, copy=False),
                    grad.reshape(y_pred.shape).astype(y_pred.dtype, copy=False))
        index = np.arange(rows.shape[0]), target.reshape(-1)
        p, inside = clip_probabilities(rows[index])
        grad = np.zeros_like(rows)
        grad[index] = -inside / p / n
        return -np.log(p).reshape(target.shape), grad.reshape(y_pred.shape)


_REGISTRY = Registry("loss", Loss, [MeanSquaredError, MeanAbsoluteError, BinaryCrossentropy,
                                    CategoricalCrossentropy, SparseCategoricalCrossentropy], {
    "mse": lambda _: MeanSquaredError(), "mean_squared_error": lambda _: MeanSquaredError(),
    "mae": lambda _: MeanAbsoluteError(), "mean_absolute_error": lambda _: MeanAbsoluteError(),
    "binary_crossentropy": lambda _: BinaryCrossentropy(),
    "categorical_crossentropy": lambda _: CategoricalCrossentropy(),
    "sparse_categorical_crossentropy": lambda _: SparseCategoricalCrossentropy(),
})


def get(identifier):
    """A loss from a Keras name (``"mse"``), a :class:`Loss`, or a ``get_config`` dict.

    The dict form is ``{"class_name": "CategoricalCrossentropy", "config": {...}}``, as
    :func:`serialize` writes it.
    """
    return _REGISTRY.get(identifier)


def serialize(loss):
    """``{"class_name", "config"}`` for a built-in loss; None for a custom one."""
    return _REGISTRY.serialize(loss)


def for_logits(loss, activation):
    """The from-logits twin of ``loss`` when it can absorb ``activation``, else None.

    Softmax folds into (sparse) categorical cross-entropy and sigmoid into binary
    cross-entropy, when the loss takes probabilities.
    """
    if getattr(loss, "from_logits", True):
        return None
    if activation == "softmax" and type(loss) in (CategoricalCrossentropy,
                                                  SparseCategoricalCrossentropy):
        return type(loss)(from_logits=True)
    if activation == "sigmoid" and type(loss) is BinaryCrossentropy:
        return BinaryCrossentropy(from_logits=True)
    return None
