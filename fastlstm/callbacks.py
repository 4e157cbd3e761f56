"""Keras-style callbacks for ``Sequential.fit``.

A callback gets ``set_model(model)`` and the hooks ``on_train_begin``, ``on_epoch_begin``,
``on_train_batch_begin``, ``on_train_batch_end``, ``on_epoch_end``, ``on_train_end``.
Epoch logs hold ``loss``, the metrics, and with validation data ``val_loss`` and
``val_<metric>``. Setting ``model.stop_training = True`` ends training after the epoch.
"""
import math

from .validation import check_float, check_int


class Callback:
    """Base class; every hook does nothing unless overridden."""

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


class History(Callback):
    """Records the epoch logs: ``history.history`` maps each key to its list of values,
    ``history.epoch`` lists the epoch indices (``fit`` returns this object)."""

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.params = {}

    def on_train_begin(self, logs=None):
        self.history, self.epoch = {}, []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


def _resolve_mode(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _monitored(logs, monitor, who):
    if monitor not in (logs or {}):
        raise ValueError(f"{who}: monitor {monitor!r} is not in the epoch logs "
                         f"{sorted(logs or {})} (val_* keys need validation data)")
    return float(logs[monitor])


class _Monitor(Callback):
    """Tracks the best value of a monitored quantity."""

    def __init__(self, monitor, mode, min_delta):
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor)
        self.min_delta = abs(float(min_delta))
        self.best = math.inf if self.mode == "min" else -math.inf

    def _improves(self, value, reference):
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs (counted from ``start_from_epoch``).

    With ``restore_best_weights``, the weights of the best epoch are put back when training
    ends (as Keras 3 does). ``baseline``: training stops unless the monitored value beats it
    within ``patience`` epochs. ``stopped_epoch`` is the epoch training stopped at (0 if not).
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        self.patience, self.verbose = int(patience), int(verbose)
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.state_dict()
        self.wait += 1
        if self._improves(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            if self.baseline is None or self._improves(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.load_state_dict(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model with ``fl.save`` at the end of epochs.

    ``filepath`` may hold ``str.format`` fields filled from ``epoch`` (1-based) and the
    logs, e.g. ``"model-{epoch:02d}-{val_loss:.3f}.safetensors"``. With ``save_best_only``
    a file is written only when ``monitor`` improves.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 mode="auto"):
        super().__init__(monitor, mode, 0.0)
        self.filepath, self.verbose = filepath, int(verbose)
        self.save_best_only = bool(save_best_only)

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        from .io import save
        path = str(self.filepath).format(epoch=epoch + 1, **(logs or {}))
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if not self._improves(value, self.best):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5g} to "
                      f"{value:.5g}, saving model to {path}")
            self.best = value
        elif self.verbose:
            print(f"Epoch {epoch + 1}: saving model to {path}")
        save(self.model, path)


class LearningRateScheduler(Callback):
    """Set the optimizer's lr at the start of each epoch.

    ``schedule`` is a function ``(epoch, lr) -> new lr`` (Keras), or a
    ``fastlstm.optim`` schedule (``StepLR``, ``ExponentialLR``, ``CosineAnnealingLR``)
    built on the model's optimizer, stepped once per epoch.
    """

    def __init__(self, schedule, verbose=0):
        from .optim import LRScheduler

        if not (callable(schedule) or isinstance(schedule, LRScheduler)):
            raise TypeError(f"schedule: expected a function (epoch, lr) -> lr or a "
                            f"fastlstm.optim schedule, got {schedule!r}")
        self.schedule, self.verbose = schedule, int(verbose)

    def on_epoch_begin(self, epoch, logs=None):
        from .optim import LRScheduler

        optimizer = self.model.optimizer
        if isinstance(self.schedule, LRScheduler):
            if self.schedule.optimizer is not optimizer:
                raise ValueError("schedule: built on another optimizer than the model's")
            if epoch > 0:
                self.schedule.step()
            return
        lr = float(self.schedule(epoch, optimizer.lr))
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"schedule: returned lr {lr!r} at epoch {epoch}, expected a "
                             f"finite number >= 0")
        optimizer.lr = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr:.6g}.")


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when a monitored value stops improving.

    One class, also importable as ``fastlstm.optim.ReduceLROnPlateau``, with two uses:

    - Keras' callback, ``fit(callbacks=[ReduceLROnPlateau(monitor="val_loss", factor=0.1,
      patience=10, mode="auto", min_delta=1e-4, cooldown=0, min_lr=0.0)])``, built
      without an optimizer: it acts on the model's at the end of every epoch, with Keras'
      semantics (``min_delta`` is an absolute threshold; the lr drops once ``patience``
      epochs have passed without improvement, ``cooldown`` counts the reducing epoch).
    - PyTorch's scheduler, ``ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
      patience=10, threshold=1e-4, threshold_mode="rel", cooldown=0, min_lr=0.0)``, with
      ``step(metric)`` once per epoch and PyTorch's semantics.

    Both run PyTorch's rule: a value improves on the best seen if it beats it by more than
    the threshold (``"rel"``: ``best * threshold``, ``"abs"``: ``threshold``); after more
    than ``patience`` epochs without improvement the lr becomes ``max(lr * factor,
    min_lr)``, and the next ``cooldown`` epochs are not counted. Keras' ``patience`` p and
    ``cooldown`` c are this rule's ``max(p - 1, 0)`` and ``max(c - 1, 0)``.
    """

    def __init__(self, optimizer=None, mode=None, factor=0.1, patience=10, threshold=None,
                 threshold_mode=None, cooldown=0, min_lr=0.0, *, monitor="val_loss",
                 min_delta=None, verbose=0):
        from .optim import Optimizer

        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a fastlstm.optim.Optimizer or None (the "
                            f"model's, as a fit callback), got {type(optimizer).__name__}")
        keras = optimizer is None
        if threshold is not None and min_delta is not None:
            raise ValueError(f"threshold, min_delta: give one (min_delta is Keras' name), got "
                             f"threshold={threshold!r} and min_delta={min_delta!r}")
        self.optimizer, self.monitor, self.verbose = optimizer, monitor, int(verbose)
        self.mode = _resolve_mode(("auto" if keras else "min") if mode is None else mode,
                                  monitor)
        self.threshold_mode = threshold_mode or ("abs" if keras else "rel")
        if self.threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode: expected 'rel' or 'abs', got {threshold_mode!r}")
        threshold = min_delta if min_delta is not None else threshold
        self.threshold = abs(check_float(1e-4 if threshold is None else threshold,
                                         "threshold", -math.inf, math.inf))
        self.factor = check_float(factor, "factor", 0.0, 1.0, high_open=True)
        self.patience = check_int(patience, "patience", minimum=0)
        self.cooldown = check_int(cooldown, "cooldown", minimum=0)
        self.min_lr = check_float(min_lr, "min_lr", 0.0, math.inf)
        # Keras counts the epoch that reaches patience, and the reducing epoch in cooldown
        self._patience = max(self.patience - 1, 0) if keras else self.patience
        self._cooldown = max(self.cooldown - 1, 0) if keras else self.cooldown
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def is_better(self, value):
        """Whether ``value`` improves on the best seen by more than the threshold."""
        sign = 1.0 if self.mode == "min" else -1.0
        margin = self.best * self.threshold if self.threshold_mode == "rel" else self.threshold
        if math.isinf(self.best):
            return sign * value < sign * self.best
        return sign * value < sign * self.best - margin

    def step(self, metric):
        """Record one epoch's ``metric``; reduce the lr if it has plateaued."""
        value = float(metric)
        if self.is_better(value):
            self.best = value
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self._patience:
            optimizer = self._optimizer()
            optimizer.lr = max(optimizer.lr * self.factor, self.min_lr)
            if self.verbose:
                print(f"ReduceLROnPlateau reducing learning rate to {optimizer.lr:.6g}.")
            self.cooldown_counter = self._cooldown
            self.num_bad_epochs = 0

    def get_last_lr(self):
        """The lr in effect now."""
        return self._optimizer().lr

    def _optimizer(self):
        return self.optimizer if self.optimizer is not None else self.model.optimizer

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        self.step(_monitored(logs, self.monitor, "ReduceLROnPlateau"))
