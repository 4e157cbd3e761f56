"""Keras-style callbacks for ``Sequential.fit``.

A callback gets ``set_model(model)`` and the hooks ``on_train_begin``, ``on_epoch_begin``,
``on_train_batch_begin``, ``on_train_batch_end``, ``on_epoch_end``, ``on_train_end``.
Epoch logs hold ``loss``, the metrics, and with validation data ``val_loss`` and
``val_<metric>``. Setting ``model.stop_training = True`` ends training after the epoch.
"""
import math

from .optim import LRScheduler


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
        if not (callable(schedule) or isinstance(schedule, LRScheduler)):
            raise TypeError(f"schedule: expected a function (epoch, lr) -> lr or a "
                            f"fastlstm.optim schedule, got {schedule!r}")
        self.schedule, self.verbose = schedule, int(verbose)

    def on_epoch_begin(self, epoch, logs=None):
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


class ReduceLROnPlateau(_Monitor):
    """Multiply the lr by ``factor`` once ``monitor`` has not improved by more than
    ``min_delta`` for ``patience`` epochs (Keras' semantics), then wait ``cooldown``
    epochs; never below ``min_lr``."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor: expected a number in (0, 1), got {factor!r}")
        super().__init__(monitor, mode, min_delta)
        self.factor, self.patience, self.verbose = float(factor), int(patience), int(verbose)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.cooldown_counter = 0
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs, self.monitor, "ReduceLROnPlateau")
        optimizer = self.model.optimizer
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(value, self.best):
            self.best = value
            self.wait = 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and optimizer.lr > self.min_lr:
                optimizer.lr = max(optimizer.lr * self.factor, self.min_lr)
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                          f"{optimizer.lr:.6g}.")
                self.cooldown_counter = self.cooldown
                self.wait = 0
