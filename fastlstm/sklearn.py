"""scikit-learn estimators on fastlstm: :class:`LSTMRegressor` and :class:`LSTMClassifier`.

::

    from fastlstm.sklearn import LSTMRegressor
    reg = LSTMRegressor(hidden_size=32, epochs=30, random_state=0).fit(X, y)
    reg.predict(X_new); reg.score(X_test, y_test)
    GridSearchCV(reg, {"hidden_size": [16, 32], "learning_rate": [1e-3, 1e-2]}).fit(X, y)

Both follow scikit-learn's estimator contract: ``__init__`` stores the hyperparameters,
``fit`` validates them and the data and sets attributes ending in ``_``; ``get_params`` /
``set_params`` / ``clone`` come from ``BaseEstimator``; ``score`` is R^2 (regressor) or
accuracy (classifier); fitted estimators pickle. ``import fastlstm`` does not import
scikit-learn: this module is imported only as ``fastlstm.sklearn``.

Input
-----
``window=None`` (default): one sequence per sample, X of shape (n_samples, timesteps,
features), or (n_samples, timesteps) for univariate sequences. Every sample must have the
time steps and features seen by ``fit``.

Ragged sequences (``window=None``): X may be a list of arrays (T_i, features) (or (T_i,)
for univariate sequences) of different lengths. They are padded after their ends and
their lengths go to the LSTM kernels, so each prediction equals that of the sequence
alone; the standardisation statistics use the valid steps only. An estimator fitted on
ragged X has ``input_shape_`` (None, features) and ``n_features_in_`` = features, and
``predict`` takes ragged lists or arrays of any length.

``window=w``: X is one time series, (n_steps,) or (n_steps, features), with one sample per
step: sample t is the window of the w steps ending at step t, and ``y[t]`` is its target
(for a one-step-ahead forecast, ``y[t] = series[t + 1]``). ``fit`` trains on the complete
windows (t >= w - 1), so it needs at least w steps; ``predict`` returns one row per step,
the windows of the first w - 1 steps being filled at the start with copies of the first row.
To forecast a held-out tail, predict on the series with the w - 1 steps before the tail
prepended and keep the last rows. Since rows stay aligned with steps, ``window`` can be
tuned by ``GridSearchCV`` like any hyperparameter (use ``TimeSeriesSplit`` for series).

``n_features_in_`` is ``X.shape[1]`` as scikit-learn defines it: the number of time steps
for sequences (``window=None``), the number of features of a series (``window`` set);
``input_shape_`` is the (timesteps, features) shape of one sample as the network sees it.

scikit-learn's ``check_estimator`` passes for both estimators. With ``window`` set three
checks cannot apply: ``check_fit1d`` (a 1-D series is valid input) and the subset and
sample-order invariance checks (each prediction reads the rows before it).

Model
-----
``num_layers`` stacked LSTM layers of ``hidden_size`` units (Keras' initialisation), a
``Dropout(dropout)`` after each when ``dropout > 0``, and a ``Dense`` head on the last
step's output: linear, trained on the mean squared error, for the regressor; softmax,
trained on the cross-entropy, for the classifier. The optimizer (``"adam"``, ``"adamw"``,
``"sgd"`` or ``"rmsprop"`` from :mod:`fastlstm.optim`) gets ``learning_rate``,
``weight_decay`` (L2 added to the gradients; decoupled for ``"adamw"``) and ``clipnorm``.
With ``standardize=True`` (default) every input feature is standardised with the mean and
standard deviation of the fit data (over samples and steps), and so is each target of the
regressor; predictions come back in the units of ``y``. Training runs in float32.

Threads
-------
During ``fit``, ``predict`` and ``predict_proba`` (so ``score``), fastlstm's kernels use
``n_threads`` threads, then the previous setting is restored; the default, None, leaves
:func:`fastlstm.set_num_threads`'s setting alone (all usable cores). The OpenBLAS pools of
NumPy and SciPy run on one thread throughout, as in every ``Sequential.fit``. Fits running
in parallel (``n_jobs`` of a search, joblib's Dask backend) should each keep to one thread
(``n_threads=1``): the kernels notice cores taken by other work and fall back to one
thread, but a team that never has to find out is faster still.
"""
import contextlib
import threading
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import (check_array, check_consistent_length,
                                          check_is_fitted, column_or_1d, validate_data)
except ImportError as error:
    raise ImportError(f"fastlstm.sklearn needs scikit-learn >= 1.6 (pip install "
                      f"'fastlstm[sklearn]'): {error}") from error

from . import _threads, layers, optim
from ._threads import single_threaded_blas
from .models import Sequential
from .validation import check_bool, check_float, check_int

_OPTIMIZERS = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD,
               "rmsprop": optim.RMSprop}
_DTYPE = np.float32

# Kernel-thread requests of the fits/predictions running now in this process, and the
# setting to restore when the last one ends (see _limited_threads).
_thread_lock = threading.Lock()
_thread_state: dict[str, Any] = {"requests": [], "saved": None}


@contextlib.contextmanager
def _limited_threads(n_threads):
    """Run fastlstm's kernels on ``n_threads`` threads (None: leave the setting alone) and
    NumPy's and SciPy's BLAS on one inside the block.

    The kernel thread count is a process-wide setting, shared by threads that run
    estimators concurrently (joblib's threading backend, Dask workers with
    ``processes=False``): while any runs, the smallest request holds; after the last, the
    earlier setting returns.
    """
    with single_threaded_blas():
        if n_threads is None:
            yield
            return
        state = _thread_state
        with _thread_lock:
            if not state["requests"]:
                state["saved"] = _threads.requested_threads()
            state["requests"].append(n_threads)
            _threads.set_num_threads(min(state["requests"]))
        try:
            yield
        finally:
            with _thread_lock:
                state["requests"].remove(n_threads)
                if state["requests"]:
                    _threads.set_num_threads(min(state["requests"]))
                else:
                    _threads.set_num_threads(state["saved"])


def _windows(series, window):
    """(n_steps, F) series -> (n_steps, window, F): the window ending at each step, the
    first window - 1 filled at the start with copies of the first row."""
    padded = np.concatenate([np.repeat(series[:1], window - 1, axis=0), series])
    views = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (n, F, w)
    return np.ascontiguousarray(views.transpose(0, 2, 1))


def _is_ragged(X):
    """Whether X is a list or tuple of sequences of different lengths."""
    if not isinstance(X, (list, tuple)) or not X:
        return False
    try:
        return len({len(sequence) for sequence in X}) > 1
    except TypeError:   # elements without a length: not sequences, validate_data reports it
        return False


class _LSTMEstimator(BaseEstimator):
    """Hyperparameters, data handling and the network shared by both estimators.

    Each subclass's ``fit`` turns its targets into network targets and calls ``_fit``
    with the head it needs (units, activation, loss).
    """

    def __init__(self, hidden_size=32, num_layers=1, learning_rate=1e-2, batch_size=32,
                 epochs=50, dropout=0.0, weight_decay=0.0, window=None, optimizer="adam",
                 clipnorm=None, standardize=True, random_state=None, verbose=0, n_threads=None):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.window = window
        self.optimizer = optimizer
        self.clipnorm = clipnorm
        self.standardize = standardize
        self.random_state = random_state
        self.verbose = verbose
        self.n_threads = n_threads

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = self.window is None
        return tags

    # ----------------------------------------------------------------- validation
    def _check_params(self):
        """Validate the hyperparameters (ValueError/TypeError naming the bad one)."""
        check_int(self.hidden_size, "hidden_size", minimum=1)
        check_int(self.num_layers, "num_layers", minimum=1)
        check_float(self.learning_rate, "learning_rate", 0.0, np.inf, low_open=True)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.epochs, "epochs", minimum=1)
        check_float(self.dropout, "dropout", 0.0, 1.0, high_open=True)
        check_float(self.weight_decay, "weight_decay", 0.0, np.inf)
        if self.window is not None:
            check_int(self.window, "window", minimum=1)
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {sorted(_OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        if self.clipnorm is not None:
            check_float(self.clipnorm, "clipnorm", 0.0, np.inf, low_open=True)
        check_bool(self.standardize, "standardize")
        check_int(self.verbose, "verbose", minimum=0, maximum=2)
        if self.n_threads is not None:
            check_int(self.n_threads, "n_threads", minimum=1)

    def _validate(self, X, y=None, reset=False, **y_options):
        """Checked X (and y) as scikit-learn's ``validate_data`` does, X shaped
        (n, timesteps, features) for the network, and the sequences' lengths (None unless
        X is ragged); sets ``n_features_in_`` etc. on reset."""
        if self.window is None and (_is_ragged(X) or not reset and self.input_shape_[0] is None):
            return self._validate_ragged(X, y, reset, **y_options)
        series = self.window is not None
        options = dict(allow_nd=True, ensure_2d=not series,
                       dtype=[np.float64, np.float32], reset=reset)
        if y is None and not reset:
            X = validate_data(self, X, **options)
        else:
            X, y = validate_data(self, X, y, **options, **y_options)
        if series:
            X = _windows(self._series(X, reset), self.window)
        elif X.ndim == 2:
            X = X[:, :, None]
        if reset:
            self.input_shape_ = X.shape[1:]
        elif X.shape[1:] != self.input_shape_:
            raise ValueError(f"X: expected samples of shape (timesteps, features) = "
                             f"{self.input_shape_} as in fit, got {X.shape[1:]}")
        return X, y, None

    def _validate_ragged(self, X, y, reset, y_numeric=False, multi_output=False):
        """A list of sequences (T_i, features) padded after their ends: (X (n, max T_i,
        features), y, lengths (n,))."""
        sequences = []
        for i, sequence in enumerate(X):
            sequence = check_array(sequence, ensure_2d=False, dtype=[np.float64, np.float32],
                                   input_name=f"X[{i}]")
            if sequence.ndim == 1:
                sequence = sequence[:, None]
            if sequence.ndim != 2 or len(sequence) == 0:
                raise ValueError(f"X[{i}]: expected a sequence of shape (T_i, features) with "
                                 f"T_i >= 1, got shape {sequence.shape}")
            sequences.append(sequence)
        if not sequences:
            raise ValueError("X: expected at least one sequence, got an empty list")
        features = sequences[0].shape[1] if reset else self.input_shape_[1]
        for i, sequence in enumerate(sequences):
            if sequence.shape[1] != features:
                raise ValueError(f"X[{i}]: expected {features} features (as X[0]"
                                 f"{'' if reset else ' in fit'}), got {sequence.shape[1]}")
        lengths = np.array([len(sequence) for sequence in sequences])
        padded = np.zeros((len(sequences), lengths.max(), features), sequences[0].dtype)
        for row, sequence in zip(padded, sequences):
            row[:len(sequence)] = sequence
        if y is not None:
            check_consistent_length(sequences, y)
            y = (check_array(y, ensure_2d=False, dtype="numeric") if y_numeric else
                 np.asarray(y))
            if not multi_output:
                y = column_or_1d(y)
        if reset:
            self.n_features_in_ = features
            self.input_shape_ = (None, features)
        return padded, y, lengths

    def _series(self, X, reset):
        """A checked series as (n_steps, features); sets or checks ``n_features_in_``
        (``validate_data`` leaves that to us when X may be 1-D)."""
        if X.ndim > 2:
            raise ValueError(f"X: with window={self.window} X is one series of shape "
                             f"(n_steps,) or (n_steps, features), got shape {X.shape}")
        if X.ndim == 1:
            if not reset and self.n_features_in_ > 1:
                raise ValueError(f"X: expected a series of shape (n_steps, "
                                 f"{self.n_features_in_}) as in fit, got a 1-D array of shape "
                                 f"{X.shape}; Reshape your data")
            X = X[:, None]
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input.")
        return X

    def _scaled(self, X):
        return ((X - self.x_mean_) / self.x_scale_).astype(_DTYPE)

    # ----------------------------------------------------------------- training
    def _complete_windows(self, X, y):
        """The training samples: all of them, or with ``window`` set the complete windows."""
        if self.window is None:
            return X, y
        if len(X) < self.window:
            raise ValueError(f"X: with window={self.window}, fit needs at least "
                             f"{self.window} steps, got n_samples = {len(X)}")
        return X[self.window - 1:], y[self.window - 1:]

    def _fit(self, X, y_network, units, activation, loss, lengths=None):
        """Standardise X, build the network and train it on (X, y_network)."""
        if self.standardize:
            steps = X.reshape(-1, X.shape[2]) if lengths is None else X[
                np.arange(X.shape[1]) < lengths[:, None]]
            self.x_mean_ = steps.mean(axis=0)
            std = steps.std(axis=0)
            self.x_scale_ = np.where(std > 0, std, 1.0)
        else:
            self.x_mean_, self.x_scale_ = np.zeros(X.shape[2]), np.ones(X.shape[2])
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        self.model_ = self._network(units, activation, seed)
        self.model_.compile(optimizer=_OPTIMIZERS[self.optimizer](
            lr=self.learning_rate, weight_decay=self.weight_decay, clipnorm=self.clipnorm),
            loss=loss)
        history = self.model_.fit(self._scaled(X), y_network, batch_size=self.batch_size,
                                  epochs=self.epochs, verbose=self.verbose, lengths=lengths)
        self.loss_curve_ = list(history.history["loss"])
        return self

    def _network(self, units, activation, seed):
        """Stacked LSTMs (+ Dropout), a Dense head on the last step."""
        stack = []
        for k in range(self.num_layers):
            stack.append(layers.LSTM(self.hidden_size, return_sequences=k < self.num_layers - 1,
                                     input_shape=self.input_shape_ if k == 0 else None))
            if self.dropout > 0:
                stack.append(layers.Dropout(self.dropout))
        stack.append(layers.Dense(units, activation=activation))
        return Sequential(stack, seed=seed)

    def _network_output(self, X, lengths):
        """Network outputs (float64) for validated, unscaled X."""
        return self.model_.predict(self._scaled(X), batch_size=max(self.batch_size, 256),
                                   lengths=lengths).astype(np.float64)


class LSTMRegressor(RegressorMixin, _LSTMEstimator):
    """LSTM regression for sequences or a windowed series (see the module docstring).

    Parameters
    ----------
    hidden_size : int, default 32
        Units of each LSTM layer.
    num_layers : int, default 1
        Stacked LSTM layers.
    learning_rate : float, default 0.01
    batch_size : int, default 32
    epochs : int, default 50
    dropout : float in [0, 1), default 0
        Dropout after each LSTM layer, in training only.
    weight_decay : float, default 0
        L2 penalty (decoupled weight decay with ``optimizer="adamw"``).
    window : int or None, default None
        Cut windows of this many steps from a series X (module docstring).
    optimizer : {"adam", "adamw", "sgd", "rmsprop"}, default "adam"
    clipnorm : float or None, default None
        Rescale the gradients so their global norm is at most this.
    standardize : bool, default True
        Standardise the input features and the targets with statistics of the fit data.
    random_state : int, RandomState or None
        Seeds the initialisation, dropout and shuffling; an int makes fit deterministic.
    verbose : {0, 1, 2}, default 0
        Progress output of ``fit`` (as ``Sequential.fit``).
    n_threads : int or None, default None
        Threads of fastlstm's kernels inside fit and predict (None: leave the process's
        setting alone; 1 for fits that run in parallel; see the module docstring).

    Attributes
    ----------
    model_ : fastlstm.Sequential
        The trained network (inputs standardised, outputs in standardised units).
    input_shape_ : tuple (timesteps, features)
    n_features_in_ : int
    feature_names_in_ : ndarray of str, when X was a DataFrame with string column names
    n_outputs_ : int
    x_mean_, x_scale_ : ndarray (features,)
    y_mean_, y_scale_ : ndarray of shape (``n_outputs_``,)
    loss_curve_ : list of float
        Training loss of each epoch (on standardised targets).
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        """Train on X (module docstring for the shapes) and y (n,) or (n, n_outputs)."""
        self._check_params()
        X, y, lengths = self._validate(X, y, reset=True, multi_output=True, y_numeric=True)
        X, y = self._complete_windows(X, np.asarray(y, dtype=np.float64))
        self._y_is_1d = y.ndim == 1
        y = y.reshape(len(y), -1)
        self.n_outputs_ = y.shape[1]
        if self.standardize:
            self.y_mean_ = y.mean(axis=0)
            std = y.std(axis=0)
            self.y_scale_ = np.where(std > 0, std, 1.0)
        else:
            self.y_mean_, self.y_scale_ = np.zeros(self.n_outputs_), np.ones(self.n_outputs_)
        targets = ((y - self.y_mean_) / self.y_scale_).astype(_DTYPE)
        with _limited_threads(self.n_threads):
            return self._fit(X, targets, self.n_outputs_, None, "mse", lengths)

    def predict(self, X):
        """Predictions (n,) or (n, ``n_outputs_``), as y was in fit, in float64."""
        check_is_fitted(self)
        X, _, lengths = self._validate(X)
        with _limited_threads(self.n_threads):
            y = self._network_output(X, lengths) * self.y_scale_ + self.y_mean_
        return y.ravel() if self._y_is_1d else y


class LSTMClassifier(ClassifierMixin, _LSTMEstimator):
    """LSTM classification for sequences or a windowed series (see the module docstring).

    Labels may be of any type scikit-learn accepts for classification (ints, strings,
    ...); ``classes_`` lists them sorted and ``predict_proba`` has a column per class.
    Parameters as for :class:`LSTMRegressor` (``standardize`` applies to X only).

    Attributes
    ----------
    model_ : fastlstm.Sequential
        The trained network; its softmax output has one unit per class.
    classes_ : ndarray (n_classes,)
    input_shape_, n_features_in_, feature_names_in_, x_mean_, x_scale_, loss_curve_ :
        as for :class:`LSTMRegressor`.
    """

    def fit(self, X, y):
        """Train on X (module docstring for the shapes) and labels y (n,)."""
        self._check_params()
        X, y, lengths = self._validate(X, y, reset=True)
        check_classification_targets(y)
        X, y = self._complete_windows(X, y)
        self.classes_, indices = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y: a classifier needs at least 2 classes, got 1 class "
                             f"({self.classes_[0]!r})")
        with _limited_threads(self.n_threads):
            return self._fit(X, indices, len(self.classes_), "softmax",
                             "sparse_categorical_crossentropy", lengths)

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        check_is_fitted(self)
        X, _, lengths = self._validate(X)
        with _limited_threads(self.n_threads):
            proba = self._network_output(X, lengths)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X):
        """The most probable class of each sample."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
