"""``Sequential``: a Keras-style stack of :mod:`fastlstm.layers` with compile/fit/evaluate/predict.

::

    model = fl.Sequential([fl.layers.LSTM(32, input_shape=(12, 1)), fl.layers.Dense(1)])
    model.compile(loss="mse", optimizer="adam", metrics=["mae"])
    history = model.fit(x, y, epochs=10, batch_size=32, validation_split=0.1)
    loss, mae = model.evaluate(x, y)
    y_hat = model.predict(x)
    fl.save(model, "model.safetensors"); model = fl.load("model.safetensors")

``Sequential`` is also a :class:`fastlstm.modules.Module`: ``model(x)``, ``model.backward``,
``model.parameters()`` and ``state_dict()`` work as for the PyTorch-style modules
(parameter names ``"<layer index>.<parameter>"``, e.g. ``"0.lstm.weight_ih_l0"``).

``fit``, ``evaluate``, ``predict`` and ``train_on_batch`` hold the OpenBLAS pools of NumPy
and SciPy to one thread while they run (restored after): the kernels' OpenMP threads own
the cores, and NumPy's products (the ``Dense`` head, the losses) run on the calling thread.
"""
import math
import sys
import time
import warnings

import numpy as np

from . import callbacks as callbacks_module
from . import layers as layers_module
from . import losses as losses_module
from . import metrics as metrics_module
from . import optim
from ._threads import single_threaded_blas
from .modules import Module
from .validation import check_bool, check_float, check_int


def _layer_seed(seed, index):
    """A per-layer seed derived from the model seed and the layer's position."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _format_logs(logs):
    return " - ".join(f"{key}: {value:.4g}" for key, value in logs.items())


class Sequential(Module):
    """A linear stack of Keras-style layers.

    Parameters
    ----------
    layers : list of fastlstm.layers.Layer, optional
    seed : int, optional
        Makes the model deterministic: layers without their own seed get one derived from
        it and their position, and ``fit`` shuffles with a generator seeded by it.
    name : str, optional
    """

    def __init__(self, layers=None, seed=None, name=None):
        self.seed = None if seed is None else check_int(seed, "seed", minimum=0)
        self.name = name or "sequential"
        self.layers = []
        self.loss = self.optimizer = None
        self.metrics = []
        self.weighted_metrics = []
        self.stop_training = False
        self.history = None
        self._rng = np.random.default_rng(self.seed)
        self._logits_loss = None
        for layer in layers or []:
            self.add(layer)

    # ----------------------------------------------------------------- structure
    def add(self, layer):
        """Append a layer; builds it at once when the model's input shape is known."""
        if not isinstance(layer, layers_module.Layer):
            raise TypeError(f"layer: expected a fastlstm.layers layer, got "
                            f"{type(layer).__name__}")
        if getattr(layer, "return_state", False):
            raise ValueError("layer: an LSTM with return_state=True returns several arrays and "
                             "cannot be stacked in Sequential")
        if layer.name is None:
            used = {existing.name for existing in self.layers}
            base = layer.default_name
            layer.name = base if base not in used else next(
                f"{base}_{i}" for i in range(1, len(used) + 2) if f"{base}_{i}" not in used)
        self.layers.append(layer)
        input_shape = self.layers[0].input_shape or self.layers[0].built_input_shape
        if input_shape is not None:
            self.build(input_shape)

    def named_children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    @property
    def built(self):
        return bool(self.layers) and all(layer.built for layer in self.layers)

    @property
    def input_shape(self):
        """Shape of one input sample (no batch axis), once known."""
        return self.layers[0].built_input_shape if self.layers else None

    def build(self, input_shape):
        """Build every layer for samples of ``input_shape`` (no batch axis)."""
        if not self.layers:
            raise ValueError("Sequential.build: the model has no layers")
        shape = tuple(input_shape)
        for index, layer in enumerate(self.layers):
            if layer.seed is None and self.seed is not None and not layer.built:
                layer.seed = _layer_seed(self.seed, index)
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def output_shapes(self):
        """Output shape of each layer (no batch axis); the model must be built."""
        shapes, shape = [], self.input_shape
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
            shapes.append(shape)
        return shapes

    def summary(self, print_fn=print):
        """Print a table of the layers, their output shapes and parameter counts."""
        if not self.built:
            print_fn(f'Model: "{self.name}" (not built: give input_shape to the first layer '
                     f'or call the model on data)')
            return
        rows = [(f"{layer.name} ({type(layer).__name__})",
                 str((None, *shape)), f"{layer.count_params():,}")
                for layer, shape in zip(self.layers, self.output_shapes())]
        header = ("Layer (type)", "Output Shape", "Param #")
        widths = [max(len(r[i]) for r in rows + [header]) + 2 for i in range(3)]
        line = "".join(text.ljust(width) for text, width in zip(header, widths))
        print_fn(f'Model: "{self.name}"')
        print_fn("=" * len(line))
        print_fn(line)
        print_fn("=" * len(line))
        for row in rows:
            print_fn("".join(text.ljust(width) for text, width in zip(row, widths)))
        print_fn("=" * len(line))
        print_fn(f"Total params: {self.num_parameters():,}")

    def reset_states(self):
        """Reset the carried state of every stateful LSTM layer."""
        for layer in self.layers:
            if hasattr(layer, "reset_states"):
                layer.reset_states()

    # ----------------------------------------------------------------- forward / backward
    def forward(self, x, logits=False, lengths=None):
        """Run the layers; with ``logits`` the last Dense layer skips its activation.

        ``lengths`` (B,): valid steps of each input sequence, a mask given directly (as
        ``Masking`` would give it to the layers after it).
        """
        return self._run(x, logits, lengths)[0]

    def _run(self, x, logits=False, lengths=None):
        """(output, the output's mask as lengths or None)."""
        if not self.layers:
            raise ValueError("Sequential: the model has no layers")
        if not self.built:
            self.build(np.shape(x)[1:])
        for index, layer in enumerate(self.layers):
            out_lengths = layer.output_lengths(x, lengths)
            kwargs = {"lengths": lengths} if layer.takes_lengths else {}
            if logits and index == len(self.layers) - 1:
                kwargs["logits"] = True
            if self._feeds_lookup(index):   # the LSTM projects the table, not every row
                x, lengths = layer.lookup(x), out_lengths
            else:
                x, lengths = layer(x, **kwargs), out_lengths
        return x, lengths

    def _feeds_lookup(self, index):
        """Whether layer ``index`` is an Embedding read next by an LSTM that takes lookups."""
        following = self.layers[index + 1] if index + 1 < len(self.layers) else None
        return (isinstance(self.layers[index], layers_module.Embedding)
                and isinstance(following, layers_module.LSTM) and following.reads_lookups)

    def backward(self, grad_out, input_grad=True):
        """Backpropagate ``grad_out`` through the layers of the last train-mode call; returns
        the gradient of the model's input, or None without ``input_grad`` (the first layer
        then skips computing it, where it can: training does this)."""
        input_grad = check_bool(input_grad, "input_grad")
        grad = grad_out
        for index in reversed(range(len(self.layers))):
            layer = self.layers[index]
            if index == 0 and not input_grad and layer.takes_input_grad:
                return layer.backward(grad, input_grad=False)
            grad = layer.backward(grad)
        return grad if input_grad else None

    # ----------------------------------------------------------------- training
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, weighted_metrics=None):
        """Set the optimizer, the loss and the metrics (names, objects or config dicts).

        ``optimizer``: ``"adam"``, ``"sgd"``, ``"rmsprop"``, ``"adamw"`` (Keras defaults) or a
        ``fastlstm.optim`` optimizer (created without parameters; bound when training starts).
        ``loss``: a Keras name from :mod:`fastlstm.losses` or a ``Loss``. ``metrics``: names
        from :mod:`fastlstm.metrics` or ``Metric`` objects; a name becomes the History key.
        As in Keras, ``metrics`` see masks but not sample or class weights;
        ``weighted_metrics`` see both (named ``"weighted_" + name`` where a metric of
        ``metrics`` has that name).
        """
        if loss is None:
            raise ValueError("loss: compile needs a loss, e.g. 'mse'")
        self.optimizer = optim.get(optimizer)
        self.loss = losses_module.get(loss)
        self.metrics = _metric_list(metrics)
        self.weighted_metrics = _metric_list(weighted_metrics)
        plain = {m.name for m in self.metrics}
        for metric in self.weighted_metrics:
            if metric.name in plain:
                metric.name = "weighted_" + metric.name
        names = [m.name for m in self.metrics + self.weighted_metrics]
        if len(set(names)) != len(names) or "loss" in names:
            raise ValueError(f"metrics, weighted_metrics: names must be distinct and not "
                             f"'loss', got {names}")
        self._logits_loss = None

    def _check_compiled(self, what):
        if self.loss is None:
            raise RuntimeError(f"Sequential.{what}: call compile(optimizer, loss, metrics) first")

    def _prepare(self, x):
        """Build on the first data and decide whether softmax/sigmoid folds into the loss."""
        if not self.built:
            self.build(np.shape(x)[1:])
        last = self.layers[-1]
        activation = getattr(last, "activation", None) if isinstance(
            last, layers_module.Dense) else None
        self._logits_loss = losses_module.for_logits(self.loss, activation)

    def _loss_and_predictions(self, x, y, sample_weight=None, lengths=None):
        """(loss value, grad w.r.t. the last layer's output, predictions, output lengths)
        for one batch; predictions are None when no metric needs them.

        A masked sequence output weighs its loss as Keras does: masked steps 0, valid ones
        (steps in the batch) / (valid steps in the batch), times ``sample_weight``.
        """
        loss = self._logits_loss or self.loss
        out, out_lengths = self._run(x, self._logits_loss is not None, lengths)
        weight = _mask_weights(out_lengths, out, sample_weight)
        value, grad = loss(y, out) if weight is None else loss(y, out, weight)
        if not (self.metrics or self.weighted_metrics):
            return value, grad, None, out_lengths
        if self._logits_loss is not None:   # the loss took logits: apply the activation
            out = layers_module.activation(self.layers[-1].activation)(out)
        return value, grad, out, out_lengths

    def _update_metrics(self, y, y_pred, sample_weight, out_lengths):
        """Metrics see the output's mask (1 at valid steps); weighted metrics see the
        weights of the loss (the mask scaled by steps / valid steps in the batch, times
        ``sample_weight``), as Keras weighs them."""
        if y_pred is None:      # no metrics
            return
        valid = _valid_steps(out_lengths, y_pred)
        mask = None if valid is None else valid.astype(float)
        for metric in self.metrics:
            metric.update_state(y, y_pred, mask)
        weight = mask if sample_weight is None else _mask_weights(out_lengths, y_pred,
                                                                  sample_weight)
        for metric in self.weighted_metrics:
            metric.update_state(y, y_pred, weight)

    def _metric_logs(self):
        return {m.name: m.result() for m in self.metrics + self.weighted_metrics}

    @single_threaded_blas()
    def train_on_batch(self, x, y, sample_weight=None, *, lengths=None):
        """One optimizer step on one batch; returns the batch loss."""
        self._check_compiled("train_on_batch")
        self._prepare(x)
        self._bind_optimizer()
        self.train()
        return self._train_step(x, y, sample_weight, lengths)[0]

    def _train_step(self, x, y, sample_weight=None, lengths=None):
        self.optimizer.zero_grad()      # bound to exactly this model's parameters
        value, grad, y_pred, out_lengths = self._loss_and_predictions(x, y, sample_weight,
                                                                      lengths)
        self.backward(grad, input_grad=False)
        self.optimizer.step()
        return value, y_pred, out_lengths

    def _bind_optimizer(self):
        params = self.parameters()
        bound = self.optimizer.params
        if not bound:
            self.optimizer.set_parameters(params)
        elif [id(p.data) for p in bound] != [id(p.data) for p in params]:
            raise ValueError("optimizer: already bound to other parameters; give compile a "
                             "fresh optimizer")

    @single_threaded_blas()
    def fit(self, x, y, batch_size=32, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            sample_weight=None, class_weight=None, *, lengths=None):
        """Train for ``epochs`` epochs (from ``initial_epoch``); returns a ``History``.

        Parameters
        ----------
        x, y : arrays with the samples on the first axis
        batch_size : int
        epochs : int
        verbose : 0 (silent), 1 (a tqdm progress bar per epoch when stdout is a terminal and
            tqdm is installed, else one line per epoch) or 2 (one line per epoch)
        callbacks : list of fastlstm.callbacks.Callback
        validation_split : float in [0, 1)
            Hold out this fraction of the samples (and of their ``sample_weight`` and
            ``lengths``), taken from the end before shuffling.
        validation_data : (x_val, y_val) or (x_val, y_val, sample_weight_val)
            Overrides ``validation_split``; unweighted unless the weights are given.
        shuffle : bool
            Reshuffle the training samples every epoch.
        sample_weight : array-like (n,) or (n, timesteps), optional
            Weight of each sample's loss (of each step's, for sequence outputs), as in
            Keras: a batch's loss is the weighted sum divided by the number of loss terms.
        class_weight : dict, optional
            Class index -> weight (classes not listed weigh 1), applied through the
            targets' classes: ``y`` (n,) or (n, 1) of class indices, or (n, classes)
            one-hot (its argmax). Not with ``sample_weight``, and not for validation.
        lengths : array-like of int (n,), optional
            Valid steps of each input sequence (padding after the end), a mask given
            directly instead of through ``Masking`` or ``Embedding(mask_zero=True)``.

        Targets must be finite (``ValueError`` otherwise). When a batch loss is NaN or
        infinite, training stops after that batch with a ``RuntimeWarning`` naming the
        epoch and batch (Keras' ``TerminateOnNaN``, always on).
        """
        self._check_compiled("fit")
        batch_size = _batch_size(batch_size)
        epochs = check_int(epochs, "epochs", minimum=1)
        initial_epoch = check_int(initial_epoch, "initial_epoch", minimum=0)
        x, y = _check_pair(x, y, "x", "y")
        if class_weight is not None:
            if sample_weight is not None:
                raise ValueError("sample_weight, class_weight: give one of them, not both")
            sample_weight = _class_weights(class_weight, y)
        sample_weight = _per_sample(sample_weight, len(x), "sample_weight", float)
        lengths = _per_sample(lengths, len(x), "lengths", int)
        val_weight = val_lengths = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (
                    2, 3):
                raise ValueError(f"validation_data: expected (x_val, y_val) or (x_val, y_val, "
                                 f"sample_weight_val), got {type(validation_data).__name__} "
                                 f"of length {len(validation_data)}"
                                 if isinstance(validation_data, (tuple, list)) else
                                 f"validation_data: expected (x_val, y_val) or (x_val, y_val, "
                                 f"sample_weight_val), got {type(validation_data).__name__}")
            x_val, y_val = _check_pair(*validation_data[:2], "validation_data[0]",
                                       "validation_data[1]")
            if len(validation_data) == 3:
                val_weight = _per_sample(validation_data[2], len(x_val), "validation_data[2]",
                                         float)
        elif check_float(validation_split, "validation_split", 0.0, 1.0, high_open=True) > 0:
            split = int(len(x) * (1.0 - validation_split))
            if split < 1 or split == len(x):
                raise ValueError(f"validation_split: {validation_split} of {len(x)} samples "
                                 f"leaves an empty training or validation set")
            x, x_val, y, y_val = x[:split], x[split:], y[:split], y[split:]
            if sample_weight is not None:
                sample_weight, val_weight = sample_weight[:split], sample_weight[split:]
            if lengths is not None:
                lengths, val_lengths = lengths[:split], lengths[split:]
        else:
            x_val = y_val = None

        self._prepare(x)
        self._bind_optimizer()
        history = callbacks_module.History()
        callback_list = [history, *(callbacks or [])]
        for callback in callback_list:
            callback.set_model(self)
        history.params = {"epochs": epochs, "steps": math.ceil(len(x) / batch_size),
                          "verbose": verbose}
        self.history = history
        self.stop_training = False
        was_training = self.training
        bar_class = _progress_bar_class(verbose)
        for callback in callback_list:
            callback.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            for callback in callback_list:
                callback.on_epoch_begin(epoch)
            started = time.perf_counter()
            bar = None if bar_class is None else bar_class(
                total=math.ceil(len(x) / batch_size), desc=f"Epoch {epoch + 1}/{epochs}",
                unit="batch", file=sys.stdout, leave=True, dynamic_ncols=True)
            logs = self._train_epoch((x, y, sample_weight, lengths), batch_size, shuffle,
                                     callback_list, bar, epoch)
            if x_val is not None:
                val_logs = self._evaluate_logs((x_val, y_val, val_weight, val_lengths),
                                               batch_size)
                logs.update((f"val_{key}", value) for key, value in val_logs.items())
            if verbose and bar is None:
                print(f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - started:.1f}s - "
                      f"{_format_logs(logs)}", flush=True)
            elif bar is not None and x_val is not None:
                print(f"  {_format_logs({k: v for k, v in logs.items() if k.startswith('val_')})}",
                      flush=True)
            for callback in callback_list:
                callback.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        for callback in callback_list:
            callback.on_train_end()
        self.train(was_training)
        return history

    def _train_epoch(self, data, batch_size, shuffle, callback_list, bar, epoch):
        """One pass over ``data`` = (x, y, sample_weight, lengths) (the last two may be
        None), updating ``bar`` if any; returns the epoch logs (means of the batch losses
        weighted by batch size, metrics over every sample). Stops training after a batch
        whose loss is not finite."""
        x, y = data[:2]
        n = len(x)
        order = self._rng.permutation(n) if shuffle else np.arange(n)
        for metric in self.metrics + self.weighted_metrics:
            metric.reset_state()
        self.train()
        loss_sum, seen = 0.0, 0
        try:
            for batch, start in enumerate(range(0, n, batch_size)):
                index = order[start:start + batch_size]
                for callback in callback_list:
                    callback.on_train_batch_begin(batch)
                batch_data = _rows(data, index)
                value, y_pred, out_lengths = self._train_step(*batch_data)
                if not math.isfinite(value):
                    warnings.warn(f"Sequential.fit: epoch {epoch + 1}, batch {batch + 1}: the "
                                  f"loss is {value}; training stopped (the weights hold that "
                                  f"batch's update)", RuntimeWarning, stacklevel=4)
                    self.stop_training = True
                loss_sum += value * len(index)
                seen += len(index)
                self._update_metrics(batch_data[1], y_pred, batch_data[2], out_lengths)
                logs = {"loss": loss_sum / seen, **self._metric_logs()}
                for callback in callback_list:
                    callback.on_train_batch_end(batch, logs)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
                    bar.update(1)
                if self.stop_training:
                    break
        finally:
            if bar is not None:
                bar.close()
        return logs

    def _evaluate_logs(self, data, batch_size):
        """{"loss": ..., metric names: ...} over ``data`` = (x, y, sample_weight, lengths),
        in eval mode."""
        for metric in self.metrics + self.weighted_metrics:
            metric.reset_state()
        was_training = self.training
        self.eval()
        loss_sum = 0.0
        x = data[0]
        try:
            for start in range(0, len(x), batch_size):
                xb, yb, wb, lb = _rows(data, slice(start, start + batch_size))
                value, _, y_pred, out_lengths = self._loss_and_predictions(xb, yb, wb, lb)
                loss_sum += value * len(xb)
                self._update_metrics(yb, y_pred, wb, out_lengths)
        finally:
            self.train(was_training)
        return {"loss": loss_sum / len(x), **self._metric_logs()}

    @single_threaded_blas()
    def evaluate(self, x, y, batch_size=32, verbose=0, sample_weight=None, *, lengths=None):
        """Loss (a float) without metrics, else ``[loss, *metrics]``, in eval mode
        (``sample_weight`` and ``lengths`` as in :meth:`fit`)."""
        self._check_compiled("evaluate")
        batch_size = _batch_size(batch_size)
        x, y = _check_pair(x, y, "x", "y")
        data = (x, y, _per_sample(sample_weight, len(x), "sample_weight", float),
                _per_sample(lengths, len(x), "lengths", int))
        self._prepare(x)
        logs = self._evaluate_logs(data, batch_size)
        if verbose:
            print(_format_logs(logs))
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    @single_threaded_blas()
    def predict(self, x, batch_size=32, verbose=0, *, lengths=None):
        """Outputs for ``x``, computed in eval mode ``batch_size`` samples at a time
        (``lengths`` as in :meth:`fit`)."""
        batch_size = _batch_size(batch_size)
        x = np.asarray(x)
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"x: expected at least one sample, got shape {x.shape}")
        lengths = _per_sample(lengths, len(x), "lengths", int)
        was_training = self.training
        self.eval()
        try:
            outputs = [self.forward(x[start:start + batch_size], lengths=None if lengths is None
                                    else lengths[start:start + batch_size])
                       for start in range(0, len(x), batch_size)]
        finally:
            self.train(was_training)
        if verbose:
            print(f"predict: {len(x)} samples")
        return np.concatenate(outputs, axis=0)

    # ----------------------------------------------------------------- persistence
    def get_weights(self):
        """All layers' weights, Keras order and layout, as one list."""
        return [array.copy() for _, array in self.named_parameters()]

    def set_weights(self, weights):
        """Load ``get_weights()``-style arrays (the model must be built); nothing is written
        unless all of them fit."""
        if not self.built:
            raise ValueError("set_weights: the model is not built (give the first layer "
                             "input_shape or call the model on data)")
        names = [name for name, _ in self.named_parameters()]
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"weights: expected {len(names)} arrays, got {len(weights)}")
        self.load_state_dict(dict(zip(names, weights)))

    def get_config(self):
        """JSON-serialisable description: layers, input shape, seed, compile settings.

        Optimizer state is not included; the optimizer's hyperparameters are.
        """
        config = {"name": self.name, "seed": self.seed,
                  "layers": [layers_module.serialize(layer) for layer in self.layers],
                  "input_shape": None if not self.built else list(self.input_shape)}
        if self.loss is not None:
            compiled = {"loss": losses_module.serialize(self.loss),
                        "optimizer": optim.serialize(self.optimizer),
                        "metrics": [metrics_module.serialize(m) for m in self.metrics],
                        "weighted_metrics": [metrics_module.serialize(m)
                                             for m in self.weighted_metrics]}
            if (compiled["loss"] and compiled["optimizer"] and all(compiled["metrics"])
                    and all(compiled["weighted_metrics"])):
                config["compile"] = compiled
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuild (and compile, if the config says how) the model ``get_config`` described."""
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError(f"config: expected a dict with a 'layers' list, got {config!r:.200}")
        model = cls([layers_module.deserialize(c) for c in config["layers"]],
                    seed=config.get("seed"), name=config.get("name"))
        if config.get("input_shape") is not None and not model.built:
            model.build(config["input_shape"])
        if config.get("compile"):
            compiled = config["compile"]
            model.compile(optimizer=compiled["optimizer"], loss=compiled["loss"],
                          metrics=compiled["metrics"],
                          weighted_metrics=compiled.get("weighted_metrics"))
        return model

    def checkpoint_state_dict(self):
        """What ``save`` writes: ``state_dict()`` plus, once the optimizer has trained,
        its state (iterations, moments) under ``"optimizer.<name>"``."""
        state = self.state_dict()
        if self.optimizer is not None and self.optimizer.params:
            state.update((f"{_OPTIMIZER_PREFIX}{name}", array)
                         for name, array in self.optimizer.state_dict().items())
        return state

    def load_checkpoint_state_dict(self, state):
        """Load what :meth:`checkpoint_state_dict` returned: the weights, and the optimizer
        state (the model must be compiled, with the saved optimizer); nothing is written
        unless all of it fits."""
        weights = {k: v for k, v in state.items() if not k.startswith(_OPTIMIZER_PREFIX)}
        optimizer_state = {k[len(_OPTIMIZER_PREFIX):]: v for k, v in state.items()
                           if k.startswith(_OPTIMIZER_PREFIX)}
        if optimizer_state:
            if self.optimizer is None:
                raise ValueError("state: holds optimizer state, but the model is not "
                                 "compiled")
            self._bind_optimizer()
            self.optimizer.load_state_dict(optimizer_state)
        self.load_state_dict(weights)

    def save(self, path):
        """Write the model to a safetensors file: weights, config (with the compile
        settings) and optimizer state, so that :func:`load_model` resumes training
        exactly where it stopped (``fl.save(self, path)`` does the same)."""
        from .io import save
        save(self, path)


_OPTIMIZER_PREFIX = "optimizer."


def load_model(path):
    """The :class:`Sequential` saved by ``model.save(path)`` (Keras' name for
    ``fl.load``): compiled with the saved optimizer and its state when it was saved
    compiled, in train mode as a new model is. Never unpickles."""
    from .io import load
    model = load(path)
    if not isinstance(model, Sequential):
        raise ValueError(f"{str(path)!r}: holds a {type(model).__name__}, load_model expects a "
                         f"Sequential (use fastlstm.load for other models)")
    return model


def _check_pair(x, y, x_name, y_name):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{x_name}, {y_name}: expected the same non-zero number of samples on "
                         f"the first axis, got shapes {x.shape} and {y.shape}")
    if y.dtype.kind in "fc" and not np.all(np.isfinite(y)):
        sample = int(np.argwhere(~np.isfinite(y))[0][0])
        raise ValueError(f"{y_name}: the targets must be finite, got NaN or inf (first in "
                         f"sample {sample})")
    return x, y


def _per_sample(values, n, name, kind):
    """None, or ``values`` as an array with ``n`` rows (floats or ints by ``kind``)."""
    if values is None:
        return None
    array = np.asarray(values)
    if array.ndim == 0 or len(array) != n:
        raise ValueError(f"{name}: expected one entry per sample ({n}), got shape "
                         f"{array.shape}")
    if kind is int:
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected {n} integers, got dtype {array.dtype} and "
                             f"shape {array.shape}")
        return array
    if array.dtype.kind not in "iuf" or not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: expected finite real numbers, got {array.dtype} values "
                         f"{array.ravel()[:8].tolist()}")
    return array.astype(np.float64)


def _class_weights(class_weight, y):
    """Keras' sample weights from ``class_weight`` and the targets' class indices."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight: expected a dict class index -> weight, got "
                        f"{type(class_weight).__name__}")
    if y.ndim > 2:
        raise ValueError(f"class_weight: needs one class per sample, y (n,), (n, 1) or (n, "
                         f"classes), got y of shape {y.shape}")
    classes = np.argmax(y, axis=-1) if y.ndim == 2 and y.shape[1] != 1 else y.reshape(len(y))
    classes = np.round(classes).astype(np.int64)
    return np.array([float(class_weight.get(int(c), 1.0)) for c in classes])


def _metric_list(metrics):
    """Fresh metrics from a name, a Metric, a config dict, or a list of them."""
    if isinstance(metrics, (str, dict, metrics_module.Metric)):
        metrics = [metrics]
    return [metrics_module.get(m) for m in (metrics or [])]


def _rows(data, index):
    """The rows ``index`` of each array of ``data`` (None stays None)."""
    return tuple(None if array is None else array[index] for array in data)


def _valid_steps(lengths, out):
    """(B, T) True at the valid steps of a sequence output whose mask is ``lengths``;
    None for an unmasked or non-sequence output."""
    if lengths is None or out.ndim < 3:
        return None
    return np.arange(out.shape[1]) < np.asarray(lengths)[:, None]


def _mask_weights(lengths, out, sample_weight):
    """Keras' loss weights for an output whose mask is ``lengths``: for a sequence output
    (B, T, ...), 0 at masked steps and (B*T)/(valid steps) at the others, times
    ``sample_weight``; otherwise ``sample_weight`` alone."""
    valid = _valid_steps(lengths, out)
    if valid is None:
        return sample_weight
    B, T = valid.shape
    count = int(valid.sum())
    weights = np.where(valid, B * T / count if count else 0.0, 0.0)
    if sample_weight is None:
        return weights
    return weights * losses_module.row_weights(sample_weight, (B, T), np.dtype(np.float64))


def _batch_size(value):
    return 32 if value is None else check_int(value, "batch_size", minimum=1)


def _progress_bar_class(verbose):
    """tqdm when verbose == 1, stdout is a terminal and tqdm is installed, else None."""
    if verbose != 1 or not sys.stdout.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm
