"""Shared test helpers: optional references fail (not skip) when CI is set."""
import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest


def require(module_name):
    """Import an optional reference library; skip locally if absent, fail under CI."""
    if os.environ.get("CI"):
        return importlib.import_module(module_name)
    return pytest.importorskip(module_name)


def report(label, actual, expected):
    """Print and return the max absolute and relative difference between two arrays."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    abs_diff = float(np.max(np.abs(actual - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    rel_diff = abs_diff / max(scale, 1e-30)
    print(f"{label}: max abs diff {abs_diff:.3e}, rel to max|ref| {rel_diff:.3e}")
    return abs_diff, rel_diff


def assert_close(label, actual, expected, rtol):
    """Assert max|actual-expected| <= rtol * max(1, max|expected|), printing the difference."""
    abs_diff, _ = report(label, actual, expected)
    scale = max(1.0, float(np.max(np.abs(np.asarray(expected, dtype=np.float64)), initial=0.0)))
    assert np.shape(actual) == np.shape(expected), f"{label}: shape {np.shape(actual)} != {np.shape(expected)}"
    assert abs_diff <= rtol * scale, f"{label}: max abs diff {abs_diff:.3e} > {rtol:.1e} * {scale:.3g}"


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def central_differences(loss, array, indices=None, eps=1e-6):
    """d loss(array) / d array[index] by central differences, ``array`` perturbed in place
    and restored: for each index of ``indices``, or for every element (the result then
    shaped like ``array``)."""
    every = indices is None
    grads = []
    for index in np.ndindex(array.shape) if every else indices:
        saved = array[index]
        array[index] = saved + eps
        up = loss(array)
        array[index] = saved - eps
        down = loss(array)
        array[index] = saved
        grads.append((up - down) / (2 * eps))
    grads = np.array(grads)
    return grads.reshape(array.shape) if every else grads


def keras_lstm(x, kernel, recurrent_kernel, bias=None, go_backwards=False):
    """Keras' LSTM equations (kernel (in, 4H), recurrent_kernel (H, 4H), bias (4H,), gates
    i, f, c, o; sigmoid and tanh) on x (B, T, in), in float64: (outputs (B, T, H) in
    processing order, h, c), as LSTM(return_sequences=True, return_state=True) gives."""
    batch, steps, _ = x.shape
    units = recurrent_kernel.shape[0]
    h = np.zeros((batch, units))
    c = np.zeros((batch, units))
    outputs = []
    for t in (reversed(range(steps)) if go_backwards else range(steps)):
        z = x[:, t] @ kernel + h @ recurrent_kernel + (0.0 if bias is None else bias)
        i = sigmoid(z[:, :units])
        f = sigmoid(z[:, units:2 * units])
        c = f * c + i * np.tanh(z[:, 2 * units:3 * units])
        o = sigmoid(z[:, 3 * units:])
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1), h, c


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))
