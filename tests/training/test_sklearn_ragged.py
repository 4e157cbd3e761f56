"""fastlstm.sklearn with ragged X (a list of (T_i, features) arrays): padding plus lengths
gives each sequence's result alone, for fit, predict and score."""
import numpy as np
import pytest

from conftest import assert_close, require

require("sklearn")
from fastlstm.sklearn import LSTMClassifier, LSTMRegressor  # noqa: E402


def ragged(rng, n=24, features=2, longest=7):
    return [rng.standard_normal((int(t), features)) for t in rng.integers(1, longest + 1, n)]


def test_regressor_predicts_each_sequence_as_alone():
    rng = np.random.default_rng(0)
    X = ragged(rng)
    y = np.array([s.sum() for s in X])
    reg = LSTMRegressor(hidden_size=4, epochs=3, random_state=0).fit(X, y)
    assert reg.input_shape_ == (None, 2) and reg.n_features_in_ == 2
    together = reg.predict(X)
    alone = np.array([reg.predict([s])[0] for s in X])
    assert_close("ragged predictions vs alone", together, alone, 1e-5)
    # the network on each unpadded sequence, computed by hand with the fitted scaling
    for s, value in zip(X[:5], together):
        direct = reg.model_.predict(((s - reg.x_mean_) / reg.x_scale_)[None].astype(
            np.float32))[0, 0] * reg.y_scale_[0] + reg.y_mean_[0]
        assert_close("unpadded network", value, direct, 1e-5)
    assert np.isfinite(reg.score(X, y))
    # standardisation uses the valid steps only
    steps = np.concatenate(X)
    assert_close("x_mean_", reg.x_mean_, steps.mean(axis=0), 1e-12)


def test_classifier_ragged_is_deterministic_and_matches_each_sequence_alone():
    rng = np.random.default_rng(1)
    X = ragged(rng, n=12)
    y = rng.integers(0, 2, len(X))
    a = LSTMClassifier(hidden_size=3, epochs=2, random_state=0).fit(X, y)
    b = LSTMClassifier(hidden_size=3, epochs=2, random_state=0).fit([s.copy() for s in X], y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a.score(X, y) == b.score(X, y)
    proba = a.predict_proba(X)
    alone = np.concatenate([a.predict_proba([s]) for s in X])
    assert_close("classifier ragged vs alone", proba, alone, 1e-5)


def test_univariate_ragged_and_checks():
    rng = np.random.default_rng(2)
    X = [rng.standard_normal(t) for t in (3, 5, 2, 4)]
    reg = LSTMRegressor(hidden_size=2, epochs=1, random_state=0).fit(X, [1.0, 2.0, 3.0, 4.0])
    assert reg.predict(X).shape == (4,)
    assert reg.predict(np.ones((2, 9))).shape == (2,)   # any length after a ragged fit
    with pytest.raises(ValueError, match=r"X\[1\]: expected 1 features \(as X\[0\] in fit\)"):
        reg.predict([np.ones(3), np.ones((3, 2))])
    with pytest.raises(ValueError, match="Input X contains NaN|X\\[0\\].*NaN"):
        reg.predict([np.array([np.nan, 1.0]), np.ones(3)])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        LSTMRegressor().fit(X, [1.0, 2.0])
