"""Losses (values, finite-difference gradients, Keras conventions) and metrics."""
import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, central_differences, report


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def cases(rng, shape):
    """(loss, y_true, y_pred) for every loss, predictions away from the clipping bounds."""
    raw = rng.standard_normal(shape)
    classes = rng.integers(0, shape[-1], shape[:-1])
    onehot = np.eye(shape[-1])[classes]
    soft = softmax(rng.standard_normal(shape))  # soft labels exercise the general gradient
    binary = rng.integers(0, 2, shape).astype(float)
    L = fl.losses
    return [
        (L.MeanSquaredError(), rng.standard_normal(shape), raw),
        (L.MeanAbsoluteError(), rng.standard_normal(shape), raw),
        (L.BinaryCrossentropy(), binary, 1 / (1 + np.exp(-raw))),
        (L.BinaryCrossentropy(from_logits=True), binary, raw),
        (L.CategoricalCrossentropy(), onehot, softmax(raw)),
        (L.CategoricalCrossentropy(from_logits=True), soft, raw),
        (L.SparseCategoricalCrossentropy(), classes, softmax(raw)),
        (L.SparseCategoricalCrossentropy(from_logits=True), classes, raw),
    ]


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (1, 2)])
def test_loss_gradients_match_finite_differences(shape):
    rng = np.random.default_rng(0)
    for loss, y_true, y_pred in cases(rng, shape):
        value, grad = loss(y_true, y_pred)
        assert isinstance(value, float) and grad.shape == y_pred.shape
        expected = central_differences(lambda p: loss.value(y_true, p), y_pred.copy())
        assert_close(f"{loss!r} {shape} gradient vs central differences", grad, expected, 1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mean_gradient_is_the_row_gradient_over_the_rows(dtype):
    """The unweighted loss is the mean of the rows and its gradient that of each row over
    their count, bit for bit, where a kernel divides on the way; and a weight of one per
    sample gives the same value."""
    rng = np.random.default_rng(4)
    for loss, y_true, y_pred in cases(rng, (3, 7, 5)):
        y_pred = y_pred.astype(dtype)
        rows, row_grad = loss._rows(y_true, y_pred)
        value, grad = loss(y_true, y_pred)
        assert grad.dtype == dtype
        np.testing.assert_array_equal(grad, row_grad / 21, err_msg=repr(loss))
        assert value == float(np.sum(rows) / 21)
        assert loss(y_true, y_pred, np.ones(3))[0] == pytest.approx(value, rel=1e-6)


def test_softmax_then_crossentropy_equals_crossentropy_from_logits():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((6, 4)) * 3
    y = rng.integers(0, 4, 6)
    probs = fl.losses.SparseCategoricalCrossentropy()(y, softmax(z))[0]
    logits = fl.losses.SparseCategoricalCrossentropy(from_logits=True)(y, z)[0]
    report("sparse CE from probabilities vs from logits", probs, logits)
    assert abs(probs - logits) < 1e-12


def test_crossentropy_from_logits_is_stable_where_probabilities_saturate():
    z = np.array([[1000.0, 0.0, -1000.0], [-800.0, 800.0, 0.0]])
    y = np.array([2, 1])
    value, grad = fl.losses.SparseCategoricalCrossentropy(from_logits=True)(y, z)
    report("saturated logits: loss", value, (2000.0 + 0.0) / 2)
    assert value == pytest.approx(1000.0) and np.all(np.isfinite(grad))
    assert_close("saturated logits: gradient", grad,
                 np.array([[0.5, 0, -0.5], [0, 0, 0]]), 1e-12)
    bce, bce_grad = fl.losses.BinaryCrossentropy(from_logits=True)(np.array([0.0, 1.0]),
                                                                   np.array([700.0, -700.0]))
    assert bce == pytest.approx(700.0) and np.all(np.isfinite(bce_grad))


def test_probabilities_are_clipped_like_keras():
    """p in {0, 1} is clipped to [1e-7, 1 - 1e-7]; no gradient flows through the clamp."""
    value, grad = fl.losses.CategoricalCrossentropy()(np.array([[0.0, 1.0]]),
                                                      np.array([[1.0, 0.0]]))
    assert value == pytest.approx(-np.log(1e-7))
    assert np.all(grad == 0)
    value, grad = fl.losses.BinaryCrossentropy()(np.array([1.0]), np.array([0.0]))
    assert value == pytest.approx(-np.log(1e-7)) and np.all(grad == 0)


def test_targets_without_the_unit_axis_are_accepted():
    y_pred = np.array([[1.0], [2.0], [4.0]])
    assert fl.losses.MeanSquaredError()(np.array([1.0, 1.0, 1.0]), y_pred)[0] == pytest.approx(
        (0 + 1 + 9) / 3)
    probs = softmax(np.arange(6.0).reshape(2, 3))
    a = fl.losses.SparseCategoricalCrossentropy()(np.array([[0], [2]]), probs)[0]
    b = fl.losses.SparseCategoricalCrossentropy()(np.array([0, 2]), probs)[0]
    assert a == b


def test_float32_predictions_give_float32_gradients():
    y_pred = np.ones((2, 3), np.float32)
    for loss in (fl.losses.MeanSquaredError(), fl.losses.CategoricalCrossentropy(from_logits=True)):
        assert loss(np.eye(3)[[0, 1]], y_pred)[1].dtype == np.float32


def test_get_and_serialize():
    for name in ("mse", "mean_squared_error", "mae", "binary_crossentropy",
                 "categorical_crossentropy", "sparse_categorical_crossentropy"):
        loss = fl.losses.get(name)
        again = fl.losses.get(fl.losses.serialize(loss))
        assert type(again) is type(loss) and again.get_config() == loss.get_config()
    loss = fl.losses.CategoricalCrossentropy(from_logits=True)
    assert fl.losses.get(loss) is loss
    assert fl.losses.get(fl.losses.serialize(loss)).from_logits


def test_for_logits_folds_only_matching_activations():
    L = fl.losses
    assert type(L.for_logits(L.CategoricalCrossentropy(), "softmax")) is L.CategoricalCrossentropy
    assert L.for_logits(L.SparseCategoricalCrossentropy(), "softmax").from_logits
    assert L.for_logits(L.BinaryCrossentropy(), "sigmoid").from_logits
    assert L.for_logits(L.BinaryCrossentropy(), "softmax") is None
    assert L.for_logits(L.CategoricalCrossentropy(from_logits=True), "softmax") is None
    assert L.for_logits(L.MeanSquaredError(), "linear") is None


def test_bad_loss_input_raises():
    with pytest.raises(ValueError, match="y_true"):
        fl.losses.MeanSquaredError()(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"y_true.*\[0, 3\)"):
        fl.losses.SparseCategoricalCrossentropy()(np.array([0, 3]), np.full((2, 3), 1 / 3))
    with pytest.raises(TypeError, match="y_true"):
        fl.losses.SparseCategoricalCrossentropy()(np.array([0.5, 1]), np.full((2, 3), 1 / 3))
    with pytest.raises(TypeError, match="y_pred"):
        fl.losses.MeanSquaredError()(np.zeros(2), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="unknown name 'hinge'"):
        fl.losses.get("hinge")
    with pytest.raises(TypeError, match="from_logits"):
        fl.losses.BinaryCrossentropy(from_logits="yes")


# ----------------------------------------------------------------------------- metrics
def test_metrics_accumulate_exactly_over_batches():
    rng = np.random.default_rng(2)
    y_true, y_pred = rng.standard_normal((10, 2)), rng.standard_normal((10, 2))
    mse, mae = fl.metrics.get("mse"), fl.metrics.get("mae")
    for start in (0, 3, 7):  # unequal batches
        stop = {0: 3, 3: 7, 7: 10}[start]
        mse.update_state(y_true[start:stop], y_pred[start:stop])
        mae.update_state(y_true[start:stop], y_pred[start:stop])
    assert_close("mse over 3 batches", mse.result(), np.mean((y_true - y_pred) ** 2), 1e-14)
    assert_close("mae over 3 batches", mae.result(), np.mean(np.abs(y_true - y_pred)), 1e-14)
    mse.reset_state()
    assert np.isnan(mse.result())


def test_accuracy_picks_the_keras_variant_from_shapes():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    classes = np.array([1, 1, 2, 0])
    sparse = fl.metrics.get("accuracy")
    assert sparse(classes, probs) == 0.75
    assert isinstance(sparse._kind, fl.metrics.SparseCategoricalAccuracy)
    categorical = fl.metrics.get("acc")
    assert categorical(np.eye(3)[classes], probs) == 0.75
    assert isinstance(categorical._kind, fl.metrics.CategoricalAccuracy)
    binary = fl.metrics.get("accuracy")
    assert binary(np.array([1, 0, 1]), np.array([[0.9], [0.6], [0.2]])) == pytest.approx(1 / 3)
    assert isinstance(binary._kind, fl.metrics.BinaryAccuracy)
    sequences = fl.metrics.get("accuracy")  # (B, T, C) predictions, (B, T) targets
    assert sequences(classes.reshape(2, 2), probs.reshape(2, 2, 3)) == 0.75


def test_perplexity_is_the_exponential_of_the_crossentropy():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 5, 4))
    targets = rng.integers(0, 4, (2, 5))
    ce = fl.losses.SparseCategoricalCrossentropy(from_logits=True).value(targets, logits)
    perplexity = fl.metrics.Perplexity()
    perplexity.update_state(targets[:1], softmax(logits[:1]))
    perplexity.update_state(targets[1:], softmax(logits[1:]))
    assert_close("perplexity vs exp(cross-entropy)", perplexity.result(), np.exp(ce), 1e-12)
    onehot = fl.metrics.Perplexity(from_logits=True)(np.eye(4)[targets], logits)
    assert_close("perplexity one-hot from logits", onehot, np.exp(ce), 1e-12)
    uniform = fl.metrics.Perplexity()(np.array([0, 3]), np.full((2, 7), 1 / 7))
    assert_close("perplexity of a uniform guess", uniform, 7.0, 1e-12)


def test_metric_names_and_errors():
    assert fl.metrics.get("mean_absolute_error").name == "mean_absolute_error"
    assert fl.metrics.get(fl.metrics.serialize(fl.metrics.BinaryAccuracy(threshold=0.3))
                          ).threshold == 0.3
    with pytest.raises(ValueError, match="unknown name 'f1'"):
        fl.metrics.get("f1")
    with pytest.raises(TypeError, match="metrics"):
        fl.metrics.get(3)
