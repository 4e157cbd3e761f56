"""Optimizers and learning-rate schedules that update NumPy parameters in place.

PyTorch style::

    opt = fl.optim.Adam(model.parameters(), lr=1e-3)   # or Adam(model), Adam([emb, lstm, fc])
    out = model(x); model.backward(grad); opt.step(); opt.zero_grad()

Keras style: ``model.compile(optimizer="adam")`` or ``optimizer=fl.optim.Adam(lr=1e-3)``
without parameters; ``Sequential`` binds the optimizer to its parameters when it trains.

``params`` is a module (anything with ``named_parameters()`` and ``grads``, such as
``fl.LSTM`` and ``fl.Module``), a list of modules, or a list of
:class:`fastlstm.modules.Parameter` / ``(name, data, grad)`` triples. Plain arrays are
refused: they carry no gradient.

Class defaults are PyTorch's; the strings of :func:`get` give Keras' defaults
(``"sgd"``: lr 0.01, ``"adam"``: lr 1e-3, ``"adamw"``: lr 1e-3 and weight decay 0.004,
``"rmsprop"``: lr 1e-3, alpha 0.9). Every optimizer takes ``weight_decay`` (L2 added to the
gradient, as PyTorch does; decoupled in :class:`AdamW`) and one of ``clipnorm`` (rescale
all gradients together so their global L2 norm is at most ``clipnorm``) or ``clipvalue``
(clamp each gradient element to [-clipvalue, clipvalue]). Clipping is applied to a copy:
the gradient arrays are left as ``backward`` wrote them.
"""
import math

import numpy as np

from ._kernels.lstm import weights_changed

from .modules import Module, Parameter
from .validation import check_bool, check_float, check_int


def _as_parameters(params):
    """Flatten modules / Parameters / (name, data, grad) triples into a list of Parameter."""
    if isinstance(params, Module):
        params = [params]
    result = []
    for item in params:
        if isinstance(item, Module):
            result.extend(item.parameters())
        elif isinstance(item, tuple) and len(item) == 3:
            result.append(Parameter(*item))
        else:
            raise TypeError(f"params: expected modules, fastlstm.modules.Parameter or (name, "
                            f"data, grad) triples, got {type(item).__name__} (a plain array "
                            f"carries no gradient: pass the module itself, e.g. "
                            f"Adam(lstm), or a fastlstm.Module's parameters())")
    for p in result:
        if not (isinstance(p.data, np.ndarray) and isinstance(p.grad, np.ndarray)
                and p.data.dtype.kind == "f" and p.grad.shape == p.data.shape):
            raise TypeError(f"params: parameter {p.name!r} must be a float ndarray with a grad "
                            f"ndarray of the same shape")
    return result


class Optimizer:
    """Base class: holds the parameters, lr, iteration count, weight decay and clipping.

    Subclasses implement ``_update(index, data, grad)`` for one parameter, ``grad``
    already clipped and L2-decayed.
    """

    def __init__(self, params, lr, weight_decay, clipnorm, clipvalue, learning_rate):
        if learning_rate is not None:
            lr = learning_rate
        self.lr = check_float(lr, "lr", 0.0, math.inf)
        self.weight_decay = check_float(weight_decay, "weight_decay", 0.0, math.inf)
        if clipnorm is not None and clipvalue is not None:
            raise ValueError(f"clipnorm, clipvalue: set at most one, got clipnorm={clipnorm!r} "
                             f"and clipvalue={clipvalue!r}")
        self.clipnorm = (None if clipnorm is None
                         else check_float(clipnorm, "clipnorm", 0.0, math.inf, low_open=True))
        self.clipvalue = (None if clipvalue is None
                          else check_float(clipvalue, "clipvalue", 0.0, math.inf, low_open=True))
        self.params = []
        self.iterations = 0
        self.state = []
        if params is not None:
            self.set_parameters(params)

    def set_parameters(self, params):
        """(Re)bind to ``params`` and reset the optimizer state."""
        self.params = _as_parameters(params)
        if not self.params:
            raise ValueError("params: got an empty parameter list")
        self.iterations = 0
        self.state = [{} for _ in self.params]

    def zero_grad(self):
        """Zero the gradient arrays in place."""
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        """Update every parameter in place from its gradient."""
        if not self.params:
            raise RuntimeError(f"{type(self).__name__}.step: no parameters (pass them to the "
                               f"constructor or to set_parameters)")
        self.iterations += 1
        grads = self._clipped_grads()
        for index, (p, grad) in enumerate(zip(self.params, grads)):
            if self.weight_decay and self._coupled_decay:
                grad = grad + self.weight_decay * p.data
            self._update(index, p.data, grad)
        weights_changed()

    _coupled_decay = True

    def _clipped_grads(self):
        grads = [p.grad for p in self.params]
        if self.clipvalue is not None:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        if self.clipnorm is not None:
            norm = global_norm(grads)
            if norm > self.clipnorm:
                scale = self.clipnorm / (norm + 1e-6)
                return [g * g.dtype.type(scale) for g in grads]
        return grads

    def get_config(self):
        """Hyperparameters (not the state), JSON-serialisable."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "clipvalue": self.clipvalue}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as PyTorch's.

    ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` at the first step);
    ``p -= lr * (g + momentum * buf if nesterov else buf)``.
    """

    def __init__(self, params=None, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, *, clipnorm=None, clipvalue=None, learning_rate=None):
        self.momentum = check_float(momentum, "momentum", 0.0, 1.0, high_open=True)
        self.dampening = check_float(dampening, "dampening", 0.0, 1.0, high_open=True)
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"nesterov: needs momentum > 0 and dampening 0, got momentum="
                             f"{momentum!r}, dampening={dampening!r}")
        self.nesterov = check_bool(nesterov, "nesterov")
        super().__init__(params, lr, weight_decay, clipnorm, clipvalue, learning_rate)

    def _update(self, index, data, grad):
        if self.momentum:
            state = self.state[index]
            if "buf" not in state:
                state["buf"] = np.array(grad, dtype=data.dtype)
            else:
                state["buf"] *= self.momentum
                state["buf"] += (1 - self.dampening) * grad
            grad = grad + self.momentum * state["buf"] if self.nesterov else state["buf"]
        data -= data.dtype.type(self.lr) * grad

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba), with PyTorch's formula.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
    """

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 *, clipnorm=None, clipvalue=None, learning_rate=None):
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(check_float(beta, f"betas[{i}]", 0.0, 1.0, high_open=True)
                           for i, beta in enumerate(betas))
        self.eps = check_float(eps, "eps", 0.0, math.inf)
        super().__init__(params, lr, weight_decay, clipnorm, clipvalue, learning_rate)

    def _update(self, index, data, grad):
        beta1, beta2 = self.betas
        state = self.state[index]
        if not state:
            state["m"] = np.zeros_like(data)
            state["v"] = np.zeros_like(data)
        m, v = state["m"], state["v"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * (grad * grad)
        t = self.iterations
        step_size = self.lr / (1 - beta1 ** t)
        denom = np.sqrt(v / (1 - beta2 ** t))
        denom += self.eps
        data -= data.dtype.type(step_size) * (m / denom)

    def get_config(self):
        return {**super().get_config(), "betas": list(self.betas), "eps": self.eps}


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's AdamW): ``p *= 1 - lr * weight_decay``
    before the Adam update."""

    _coupled_decay = False

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 *, clipnorm=None, clipvalue=None, learning_rate=None):
        super().__init__(params, lr, betas, eps, weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, learning_rate=learning_rate)

    def _update(self, index, data, grad):
        if self.weight_decay:
            data *= data.dtype.type(1 - self.lr * self.weight_decay)
        super()._update(index, data, grad)


class RMSprop(Optimizer):
    """RMSprop, with PyTorch's formula.

    ``s = alpha s + (1 - alpha) g^2``; ``u = g / (sqrt(s) + eps)``;
    with momentum ``buf = momentum * buf + u``, ``p -= lr * buf``, else ``p -= lr * u``.
    (``alpha`` is Keras' ``rho``.)
    """

    def __init__(self, params=None, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, *, clipnorm=None, clipvalue=None, learning_rate=None):
        self.alpha = check_float(alpha, "alpha", 0.0, 1.0, high_open=True)
        self.eps = check_float(eps, "eps", 0.0, math.inf)
        self.momentum = check_float(momentum, "momentum", 0.0, 1.0, high_open=True)
        super().__init__(params, lr, weight_decay, clipnorm, clipvalue, learning_rate)

    def _update(self, index, data, grad):
        state = self.state[index]
        if not state:
            state["square_avg"] = np.zeros_like(data)
            if self.momentum:
                state["buf"] = np.zeros_like(data)
        square_avg = state["square_avg"]
        square_avg *= self.alpha
        square_avg += (1 - self.alpha) * (grad * grad)
        update = grad / (np.sqrt(square_avg) + data.dtype.type(self.eps))
        if self.momentum:
            state["buf"] *= self.momentum
            state["buf"] += update
            update = state["buf"]
        data -= data.dtype.type(self.lr) * update

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum}


def global_norm(grads):
    """L2 norm of all arrays together (computed in float64)."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads))


def clip_grad_norm_(params, max_norm):
    """Scale the gradients of ``params`` in place so their global L2 norm is <= ``max_norm``.

    PyTorch's ``torch.nn.utils.clip_grad_norm_``; ``params`` as for an optimizer.
    Returns the norm before clipping.
    """
    max_norm = check_float(max_norm, "max_norm", 0.0, math.inf, low_open=True)
    grads = [p.grad for p in _as_parameters(params)]
    norm = global_norm(grads)
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            g *= g.dtype.type(scale)
    return norm


_STRINGS = {
    "sgd": lambda: SGD(lr=0.01),
    "adam": lambda: Adam(lr=1e-3),
    "adamw": lambda: AdamW(lr=1e-3, weight_decay=0.004),
    "rmsprop": lambda: RMSprop(lr=1e-3, alpha=0.9),
}
_CLASSES = {cls.__name__: cls for cls in (SGD, Adam, AdamW, RMSprop)}


def get(identifier):
    """An optimizer from a Keras name (``"adam"``: Keras defaults, see the module docstring),
    an :class:`Optimizer`, or a ``{"class_name", "config"}`` dict as :func:`serialize` writes."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        if identifier.lower() not in _STRINGS:
            raise ValueError(f"optimizer: unknown name {identifier!r}, expected one of "
                             f"{sorted(_STRINGS)} or a fastlstm.optim.Optimizer")
        return _STRINGS[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASSES:
        config = dict(identifier.get("config", {}))
        if "betas" in config:
            config["betas"] = tuple(config["betas"])
        return _CLASSES[identifier["class_name"]](**config)
    raise TypeError(f"optimizer: expected a name such as 'adam', a fastlstm.optim.Optimizer or "
                    f"a serialized optimizer dict, got {identifier!r}")


def serialize(optimizer):
    """``{"class_name", "config"}`` of a built-in optimizer (hyperparameters, not state)."""
    if type(optimizer) is _CLASSES.get(type(optimizer).__name__):
        return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}
    return None


class LRScheduler:
    """Base of the epoch-indexed schedules: ``step()`` advances one epoch and sets
    ``optimizer.lr = lr_at(epoch)`` from the lr the optimizer had at construction."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a fastlstm.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def step(self):
        """Advance one epoch and update the optimizer's lr."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self):
        """The lr in effect now."""
        return self.optimizer.lr


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = check_int(step_size, "step_size", minimum=1)
        self.gamma = check_float(gamma, "gamma", 0.0, math.inf, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch."""

    def __init__(self, optimizer, gamma):
        self.gamma = check_float(gamma, "gamma", 0.0, math.inf, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = check_int(T_max, "T_max", minimum=1)
        self.eta_min = check_float(eta_min, "eta_min", 0.0, math.inf)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        cosine = (1 + math.cos(math.pi * epoch / self.T_max)) / 2
        return self.eta_min + (self.base_lr - self.eta_min) * cosine


class ReduceLROnPlateau:
    """Multiply the lr by ``factor`` when a metric has stopped improving (PyTorch's).

    ``step(metric)`` once per epoch. After more than ``patience`` epochs without an
    improvement (``mode="min"``: below ``best * (1 - threshold)`` with
    ``threshold_mode="rel"``, below ``best - threshold`` with ``"abs"``; mirrored for
    ``"max"``), lr becomes ``max(lr * factor, min_lr)`` and ``cooldown`` epochs pass before
    counting again.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a fastlstm.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode: expected 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = check_float(factor, "factor", 0.0, 1.0, high_open=True)
        self.optimizer, self.mode, self.threshold_mode = optimizer, mode, threshold_mode
        self.patience = check_int(patience, "patience", minimum=0)
        self.cooldown = check_int(cooldown, "cooldown", minimum=0)
        self.threshold = check_float(threshold, "threshold", 0.0, math.inf)
        self.min_lr = check_float(min_lr, "min_lr", 0.0, math.inf)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def is_better(self, value):
        """Whether ``value`` improves on the best seen by more than the threshold."""
        if self.mode == "min":
            bound = (self.best * (1 - self.threshold) if self.threshold_mode == "rel"
                     else self.best - self.threshold)
            return value < bound
        bound = (self.best * (1 + self.threshold) if self.threshold_mode == "rel"
                 else self.best + self.threshold)
        return value > bound

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
        if self.num_bad_epochs > self.patience:
            self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def get_last_lr(self):
        return self.optimizer.lr
