"""Metrics with Keras' stateful interface: ``update_state``, ``result``, ``reset_state``.

A metric accumulates over batches (``Sequential.fit`` reports the epoch's running value);
``metric(y_true, y_pred, sample_weight=None)`` updates it and returns the result. As in
Keras, a metric has one value per row (the last axis of y_pred reduced: the mean error of
a row, whether its argmax is right) and reports their mean, weighted by ``sample_weight``
when given (sum(w * value) / sum(w)). Every metric is exact over what it has seen: weighted
sums and weights are accumulated, not per-batch means.

Strings accepted by ``Sequential.compile(metrics=[...])`` (the string becomes the name in
the History): ``mse``/``mean_squared_error``, ``mae``/``mean_absolute_error``,
``accuracy``/``acc`` (binary, categorical or sparse, chosen from the shapes of the first
batch as Keras does), ``binary_accuracy``, ``categorical_accuracy``,
``sparse_categorical_accuracy``, ``perplexity``.
"""
import numpy as np

from ._registry import Registry
from .losses import (as_prediction, clip_probabilities, dense_targets, log_softmax,
                     row_weights, sparse_targets)


class Metric:
    """Base class: subclasses return the value of each row of a batch from ``_values``."""

    def __init__(self, name=None):
        self.name = name or self.default_name
        self.reset_state()

    def reset_state(self):
        """Forget every batch seen."""
        self._total, self._count = 0.0, 0

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add one batch; ``sample_weight`` is shaped like the rows or like their leading
        axes (one weight per sample)."""
        values = np.asarray(self._values(y_true, as_prediction(y_pred)), dtype=np.float64)
        if sample_weight is None:
            self._total += float(np.sum(values))
            self._count += values.size
        else:
            weight = row_weights(sample_weight, values.shape, np.dtype(np.float64))
            self._total += float(np.sum(values * weight))
            self._count += float(np.sum(weight))

    def result(self):
        """The metric over all batches since the last reset (NaN before any weight)."""
        return self._total / self._count if self._count else float("nan")

    def __call__(self, y_true, y_pred, sample_weight=None):
        self.update_state(y_true, y_pred, sample_weight)
        return self.result()

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class MeanSquaredError(Metric):
    """Mean of (y_pred - y_true)**2: per row over the last axis, then over the rows."""

    default_name = "mean_squared_error"

    def _values(self, y_true, y_pred):
        diff = y_pred - dense_targets(y_true, y_pred)
        return np.mean(diff * diff, axis=-1)


class MeanAbsoluteError(Metric):
    """Mean of ``|y_pred - y_true|``: per row over the last axis, then over the rows."""

    default_name = "mean_absolute_error"

    def _values(self, y_true, y_pred):
        return np.mean(np.abs(y_pred - dense_targets(y_true, y_pred)), axis=-1)


class BinaryAccuracy(Metric):
    """Fraction of elements where (y_pred > threshold) equals the 0/1 target (per row
    over the last axis, then over the rows)."""

    default_name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        self.threshold = float(threshold)
        super().__init__(name)

    def _values(self, y_true, y_pred):
        y = dense_targets(y_true, y_pred)
        return np.mean((y_pred > self.threshold) == (y > 0.5), axis=-1)

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}


class CategoricalAccuracy(Metric):
    """Fraction of positions where argmax(y_pred) equals argmax(y_true) (one-hot)."""

    default_name = "categorical_accuracy"

    def _values(self, y_true, y_pred):
        return np.argmax(y_pred, axis=-1) == np.argmax(dense_targets(y_true, y_pred), axis=-1)


class SparseCategoricalAccuracy(Metric):
    """Fraction of positions where argmax(y_pred) equals the integer target."""

    default_name = "sparse_categorical_accuracy"

    def _values(self, y_true, y_pred):
        return np.argmax(y_pred, axis=-1) == sparse_targets(y_true, y_pred)


class Accuracy(Metric):
    """Keras' ``"accuracy"``: binary if y_pred has one output unit, categorical if y_true is
    shaped like y_pred (one-hot), sparse otherwise; decided on the first batch."""

    default_name = "accuracy"

    def reset_state(self):
        super().reset_state()
        self._kind = None

    def _values(self, y_true, y_pred):
        if self._kind is None:
            if y_pred.shape[-1:] == (1,):
                self._kind = BinaryAccuracy()
            elif np.shape(y_true) == y_pred.shape:
                self._kind = CategoricalAccuracy()
            else:
                self._kind = SparseCategoricalAccuracy()
        return self._kind._values(y_true, y_pred)


class Perplexity(Metric):
    """exp(mean cross-entropy per position), from probabilities (or logits).

    Targets are integer classes (shaped like y_pred without its class axis) or one-hot
    (shaped like y_pred). A uniform guess over C classes scores C.
    """

    default_name = "perplexity"

    def __init__(self, name=None, from_logits=False):
        self.from_logits = bool(from_logits)
        super().__init__(name)

    def _values(self, y_true, y_pred):
        log_p = log_softmax(y_pred) if self.from_logits else np.log(clip_probabilities(y_pred)[0])
        if np.shape(y_true) == y_pred.shape and y_pred.shape[-1] > 1:
            return -np.sum(dense_targets(y_true, y_pred) * log_p, axis=-1)
        target = sparse_targets(y_true, y_pred)
        return -np.take_along_axis(log_p, target[..., None], axis=-1)[..., 0]

    def result(self):
        return float(np.exp(super().result()))

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


_REGISTRY = Registry("metrics", Metric, [
    MeanSquaredError, MeanAbsoluteError, Accuracy, BinaryAccuracy, CategoricalAccuracy,
    SparseCategoricalAccuracy, Perplexity], {
    key: (lambda cls: lambda name: cls(name=name))(cls) for key, cls in {
        "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
        "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
        "accuracy": Accuracy, "acc": Accuracy,
        "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
        "sparse_categorical_accuracy": SparseCategoricalAccuracy,
        "perplexity": Perplexity}.items()})


def get(identifier):
    """A fresh metric from a name (which becomes its ``name``), a :class:`Metric`, or a
    ``{"class_name", "config"}`` dict as :func:`serialize` writes it."""
    return _REGISTRY.get(identifier)


def serialize(metric):
    """``{"class_name", "config"}`` for a built-in metric; None for a custom one."""
    return _REGISTRY.serialize(metric)
