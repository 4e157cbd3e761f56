"""Optimizers and learning-rate schedules that update NumPy parameters in place.

Two families, kept apart:

- PyTorch's (:class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`RMSprop`): PyTorch's
  argument names, defaults and update formulas, for ``fl.LSTM`` and the PyTorch-style
  modules::

      opt = fl.optim.Adam(model.parameters(), lr=1e-3)   # or Adam(model), Adam([emb, lstm])
      out = model(x); model.backward(grad); opt.step(); opt.zero_grad()

- Keras 3's (:class:`KerasSGD`, :class:`KerasAdam`, :class:`KerasAdamW`,
  :class:`KerasRMSprop`): Keras' argument names, defaults and update formulas (Adam's
  epsilon outside the bias-corrected square root, RMSprop's inside it, SGD's momentum
  holding the lr-scaled step), so a ``Sequential`` trains as the same Keras model does.
  ``model.compile(optimizer="adam")`` (also ``"sgd"``, ``"rmsprop"``, ``"adamw"``) gives
  these with Keras' defaults; ``Sequential`` binds an optimizer created without parameters
  to its own when it trains.

``params`` is a module (a :class:`fastlstm.Module`, ``fl.LSTM`` included), a list of
modules, or a list of :class:`fastlstm.modules.Parameter` / ``(name, data, grad)``
triples. Plain arrays are refused: they carry no gradient. ``lr`` (also readable and
writable as ``learning_rate``) is the learning rate that schedules and callbacks change.

Clipping is applied to a copy: the gradient arrays are left as ``backward`` wrote them.
PyTorch's family takes ``clipnorm`` (all gradients rescaled together, as
``clip_grad_norm_``) or ``clipvalue``; Keras' takes Keras' ``clipnorm`` (each gradient
on its own), ``global_clipnorm`` or ``clipvalue``. ``weight_decay`` is L2 added to the
gradient in PyTorch's family (decoupled in :class:`AdamW`) and decoupled in all of
Keras' (``p -= lr * weight_decay * p`` before the update).

:class:`ReduceLROnPlateau` is :class:`fastlstm.callbacks.ReduceLROnPlateau` (one class,
both a PyTorch-style scheduler and a Keras callback).
"""
import math

import numpy as np

from ._kernels import update as _update
from ._kernels.lstm import weights_changed
from ._registry import Registry
from ._threads import get_num_threads
from .callbacks import ReduceLROnPlateau
from .modules import Module, Parameter
from .validation import check_bool, check_float, check_int

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "KerasOptimizer", "KerasSGD",
           "KerasAdam", "KerasAdamW", "KerasRMSprop", "clip_grad_norm_", "global_norm", "get",
           "serialize", "LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR",
           "ReduceLROnPlateau"]


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


def _fused(kernel, arrays, *scalars):
    """``kernel(*flat arrays, *scalars, threads)``: an elementwise update of
    fastlstm._kernels.update over ``arrays`` (data, gradient, state; an empty array stays
    empty) on the kernels' threads. Arrays laid out alike in one block (a Keras kernel is a
    transposed view) pass as flat views in memory order; otherwise each goes through a
    C-ordered copy in data's dtype, written back."""
    scalars += (get_num_threads(),)
    data = arrays[0]
    if (data.flags.c_contiguous or data.flags.f_contiguous) and all(
            a.size == 0 or (a.strides == data.strides and a.dtype == data.dtype)
            for a in arrays):
        kernel(*(a.ravel(order="K") for a in arrays), *scalars)
        return
    flat = [np.ascontiguousarray(a, dtype=data.dtype).reshape(-1) for a in arrays]
    kernel(*flat, *scalars)
    for array, copy in zip(arrays[:1] + arrays[2:], flat[:1] + flat[2:]):   # not the gradient
        if not np.shares_memory(array, copy):
            array[...] = copy.reshape(array.shape)


def _positive_or_none(value, name):
    return None if value is None else check_float(value, name, 0.0, math.inf, low_open=True)


class Optimizer:
    """Base class: holds the parameters, lr, iteration count and per-parameter state.

    ``step()`` clips the gradients (``_clipped_grads``), applies weight decay
    (``_decay``) and calls the subclass's ``_update(index, data, grad)`` per parameter.
    """

    def __init__(self, params, lr, weight_decay, clipnorm=None, clipvalue=None,
                 global_clipnorm=None):
        self.lr = check_float(lr, "lr", 0.0, math.inf)
        self.weight_decay = check_float(weight_decay or 0.0, "weight_decay", 0.0, math.inf)
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        if sum(value is not None for value in clips.values()) > 1:
            raise ValueError(f"clipnorm, clipvalue, global_clipnorm: set at most one, got "
                             f"{clips}")
        self.clipnorm = _positive_or_none(clipnorm, "clipnorm")
        self.clipvalue = _positive_or_none(clipvalue, "clipvalue")
        self.global_clipnorm = _positive_or_none(global_clipnorm, "global_clipnorm")
        self.params = []
        self.iterations = 0
        self.state = []
        if params is not None:
            self.set_parameters(params)

    @property
    def learning_rate(self):
        """The learning rate (the same value as ``lr``)."""
        return self.lr

    @learning_rate.setter
    def learning_rate(self, value):
        self.lr = check_float(value, "learning_rate", 0.0, math.inf)

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

    #: names of the per-parameter state arrays a subclass may create
    _state_names: tuple = ()

    def state_dict(self):
        """The training state (not the hyperparameters) as arrays: ``"iterations"`` (an
        int64 scalar) and ``"<parameter index>.<name>"`` for each state array (copies)."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for index, entries in enumerate(self.state):
            for name, array in entries.items():
                state[f"{index}.{name}"] = array.copy()
        return state

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned, for the same parameters; nothing is
        written unless every entry fits."""
        if not self.params:
            raise RuntimeError(f"{type(self).__name__}.load_state_dict: no parameters (bind "
                               f"them first)")
        state = dict(state)
        if "iterations" not in state:
            raise ValueError("state: missing 'iterations'")
        iterations = np.asarray(state.pop("iterations"))
        if iterations.shape != () or iterations.dtype.kind not in "iu" or iterations < 0:
            raise ValueError(f"state['iterations']: expected a non-negative integer scalar, "
                             f"got {iterations!r}")
        entries = [{} for _ in self.params]
        for key, value in state.items():
            index, _, name = key.partition(".")
            if not index.isdigit() or int(index) >= len(self.params) or \
                    name not in self._state_names:
                raise ValueError(f"state: unexpected entry {key!r}; expected '<index>.<name>' "
                                 f"with index < {len(self.params)} and name in "
                                 f"{list(self._state_names)}")
            data = self.params[int(index)].data
            array = np.asarray(value)
            if array.shape != data.shape or array.dtype.kind != "f":
                raise ValueError(f"state[{key!r}]: expected a float array of shape "
                                 f"{data.shape}, got {array.dtype} {array.shape}")
            entries[int(index)][name] = np.array(array, dtype=data.dtype)
        self.iterations = int(iterations)
        self.state = entries

    def step(self):
        """Update every parameter in place from its gradient."""
        if not self.params:
            raise RuntimeError(f"{type(self).__name__}.step: no parameters (pass them to the "
                               f"constructor or to set_parameters)")
        self.iterations += 1
        for index, (p, grad) in enumerate(zip(self.params, self._clipped_grads())):
            self._update(index, p.data, self._decay(p.data, grad))
        weights_changed()

    def _decay(self, data, grad):
        """PyTorch's L2 weight decay: the gradient plus ``weight_decay * data``."""
        return grad + self.weight_decay * data if self.weight_decay else grad

    def _clipped_grads(self):
        grads = [p.grad for p in self.params]
        if self.clipvalue is not None:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        if self.clipnorm is not None:   # PyTorch's clip_grad_norm_
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


# ---------------------------------------------------------------- PyTorch's optimizers
class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as PyTorch's.

    ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` at the first step);
    ``p -= lr * (g + momentum * buf if nesterov else buf)``.
    """

    _state_names = ("buf",)

    def __init__(self, params=None, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, *, clipnorm=None, clipvalue=None, learning_rate=None):
        self.momentum = check_float(momentum, "momentum", 0.0, 1.0, high_open=True)
        self.dampening = check_float(dampening, "dampening", 0.0, 1.0, high_open=True)
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"nesterov: needs momentum > 0 and dampening 0, got momentum="
                             f"{momentum!r}, dampening={dampening!r}")
        self.nesterov = check_bool(nesterov, "nesterov")
        super().__init__(params, lr if learning_rate is None else learning_rate, weight_decay,
                         clipnorm, clipvalue)

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

    _state_names = ("m", "v")

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 *, clipnorm=None, clipvalue=None, learning_rate=None):
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(check_float(beta, f"betas[{i}]", 0.0, 1.0, high_open=True)
                           for i, beta in enumerate(betas))
        self.eps = check_float(eps, "eps", 0.0, math.inf)
        super().__init__(params, lr if learning_rate is None else learning_rate, weight_decay,
                         clipnorm, clipvalue)

    def _update(self, index, data, grad):
        beta1, beta2 = self.betas
        state = self.state[index]
        if not state:
            state["m"] = np.zeros_like(data)
            state["v"] = np.zeros_like(data)
        t = self.iterations
        _fused(_update.adam, (data, grad, state["m"], state["v"]), beta1, beta2,
               self.lr / (1 - beta1 ** t), 1 - beta2 ** t, self.eps)

    def get_config(self):
        return {**super().get_config(), "betas": list(self.betas), "eps": self.eps}


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's AdamW): ``p *= 1 - lr * weight_decay``
    before the Adam update."""

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 *, clipnorm=None, clipvalue=None, learning_rate=None):
        super().__init__(params, lr, betas, eps, weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, learning_rate=learning_rate)

    def _decay(self, data, grad):
        if self.weight_decay:
            data *= data.dtype.type(1 - self.lr * self.weight_decay)
        return grad


class RMSprop(Optimizer):
    """RMSprop, with PyTorch's formula.

    ``s = alpha s + (1 - alpha) g^2``; ``u = g / (sqrt(s) + eps)``;
    with momentum ``buf = momentum * buf + u``, ``p -= lr * buf``, else ``p -= lr * u``.
    (``alpha`` is Keras' ``rho``.)
    """

    _state_names = ("square_avg", "buf")

    def __init__(self, params=None, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, *, clipnorm=None, clipvalue=None, learning_rate=None):
        self.alpha = check_float(alpha, "alpha", 0.0, 1.0, high_open=True)
        self.eps = check_float(eps, "eps", 0.0, math.inf)
        self.momentum = check_float(momentum, "momentum", 0.0, 1.0, high_open=True)
        super().__init__(params, lr if learning_rate is None else learning_rate, weight_decay,
                         clipnorm, clipvalue)

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


# ---------------------------------------------------------------- Keras' optimizers
class KerasOptimizer(Optimizer):
    """Base of Keras 3's optimizers: decoupled weight decay and Keras' clipping.

    ``weight_decay`` (None or 0: none) shrinks each parameter by ``lr * weight_decay``
    before its update; ``clipnorm`` rescales each gradient whose L2 norm exceeds it,
    ``global_clipnorm`` all gradients together, ``clipvalue`` clamps each element.
    """

    def _decay(self, data, grad):
        if self.weight_decay:
            data -= data * data.dtype.type(self.weight_decay * self.lr)
        return grad

    def _clipped_grads(self):
        grads = [p.grad for p in self.params]
        if self.clipnorm is not None:
            return [g * g.dtype.type(self.clipnorm / max(global_norm([g]), self.clipnorm))
                    for g in grads]
        if self.global_clipnorm is not None:
            scale = self.global_clipnorm / max(global_norm(grads), self.global_clipnorm)
            return [g * g.dtype.type(scale) for g in grads]
        if self.clipvalue is not None:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def get_config(self):
        return {"learning_rate": self.lr, "weight_decay": self.weight_decay or None,
                "clipnorm": self.clipnorm, "clipvalue": self.clipvalue,
                "global_clipnorm": self.global_clipnorm}


class KerasSGD(KerasOptimizer):
    """Keras' SGD: with momentum, ``m = momentum * m - lr * g`` (m starts at 0) and
    ``p += m``, or with ``nesterov`` ``p += momentum * m - lr * g``; else ``p -= lr * g``."""

    _state_names = ("momentum",)

    def __init__(self, params=None, learning_rate=0.01, momentum=0.0, nesterov=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        self.momentum = check_float(momentum, "momentum", 0.0, 1.0)
        self.nesterov = check_bool(nesterov, "nesterov")
        super().__init__(params, learning_rate, weight_decay, clipnorm, clipvalue,
                         global_clipnorm)

    def _update(self, index, data, grad):
        lr = data.dtype.type(self.lr)
        if not self.momentum:
            data -= lr * grad
            return
        m = self.state[index].setdefault("momentum", np.zeros_like(data))
        momentum = data.dtype.type(self.momentum)
        m *= momentum
        m -= lr * grad
        data += momentum * m - lr * grad if self.nesterov else m

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class KerasAdam(KerasOptimizer):
    """Keras' Adam: ``m += (1 - beta_1) (g - m)``, ``v += (1 - beta_2) (g^2 - v)``,
    ``p -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)`` (epsilon
    outside the bias correction, unlike PyTorch's); ``amsgrad`` uses the running max of v."""

    _state_names = ("m", "v", "v_hat")

    def __init__(self, params=None, learning_rate=0.001, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None):
        self.beta_1 = check_float(beta_1, "beta_1", 0.0, 1.0, high_open=True)
        self.beta_2 = check_float(beta_2, "beta_2", 0.0, 1.0, high_open=True)
        self.epsilon = check_float(epsilon, "epsilon", 0.0, math.inf)
        self.amsgrad = check_bool(amsgrad, "amsgrad")
        super().__init__(params, learning_rate, weight_decay, clipnorm, clipvalue,
                         global_clipnorm)

    def _update(self, index, data, grad):
        state = self.state[index]
        if not state:
            state["m"], state["v"] = np.zeros_like(data), np.zeros_like(data)
            if self.amsgrad:
                state["v_hat"] = np.zeros_like(data)
        t = self.iterations
        alpha = self.lr * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        # Keras' operations in Keras' order, fused (see fastlstm._kernels.update)
        _fused(_update.keras_adam, (data, grad, state["m"], state["v"],
                                    state.get("v_hat", data[:0])),
               self.beta_1, self.beta_2, alpha, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class KerasAdamW(KerasAdam):
    """Keras' AdamW: :class:`KerasAdam` with ``weight_decay`` 0.004 by default."""

    def __init__(self, params=None, learning_rate=0.001, weight_decay=0.004, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None):
        super().__init__(params, learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay,
                         clipnorm, clipvalue, global_clipnorm)


class KerasRMSprop(KerasOptimizer):
    """Keras' RMSprop: ``s = rho s + (1 - rho) g^2``, ``u = lr g / sqrt(s + epsilon)``
    (epsilon inside the root, unlike PyTorch's); with ``centered``, ``s - a^2`` replaces
    ``s`` (a the mean gradient); with momentum ``buf = momentum buf + u``, ``p -= buf``,
    else ``p -= u``."""

    _state_names = ("velocity", "average_grad", "momentum")

    def __init__(self, params=None, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None):
        self.rho = check_float(rho, "rho", 0.0, 1.0, high_open=True)
        self.momentum = check_float(momentum, "momentum", 0.0, 1.0, high_open=True)
        self.epsilon = check_float(epsilon, "epsilon", 0.0, math.inf)
        self.centered = check_bool(centered, "centered")
        super().__init__(params, learning_rate, weight_decay, clipnorm, clipvalue,
                         global_clipnorm)

    def _update(self, index, data, grad):
        state, rho = self.state[index], data.dtype.type(self.rho)
        if not state:
            state["velocity"] = np.zeros_like(data)
            if self.centered:
                state["average_grad"] = np.zeros_like(data)
            if self.momentum:
                state["momentum"] = np.zeros_like(data)
        velocity = state["velocity"]
        velocity *= rho
        velocity += (1 - rho) * (grad * grad)
        denominator = velocity + data.dtype.type(self.epsilon)
        if self.centered:
            average = state["average_grad"]
            average *= rho
            average += (1 - rho) * grad
            denominator -= average * average
        increment = data.dtype.type(self.lr) * grad / np.sqrt(denominator)
        if self.momentum:
            buf = state["momentum"]
            buf *= data.dtype.type(self.momentum)
            buf += increment
            increment = buf
        data -= increment

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


# ---------------------------------------------------------------- helpers and lookup
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


_REGISTRY = Registry("optimizer", Optimizer, [
    SGD, Adam, AdamW, RMSprop, KerasSGD, KerasAdam, KerasAdamW, KerasRMSprop], {
    "sgd": lambda _: KerasSGD(), "adam": lambda _: KerasAdam(),
    "adamw": lambda _: KerasAdamW(), "rmsprop": lambda _: KerasRMSprop()})


def get(identifier):
    """An optimizer from a Keras name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``:
    Keras' optimizer with Keras 3's defaults), an :class:`Optimizer`, or a
    ``{"class_name", "config"}`` dict as :func:`serialize` writes."""
    return _REGISTRY.get(identifier)


def serialize(optimizer):
    """``{"class_name", "config"}`` of a built-in optimizer (hyperparameters, not state);
    None for others."""
    return _REGISTRY.serialize(optimizer)


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



