"""fastlstm.sklearn: scikit-learn's estimator checks, 3-D and windowed input, searches
(in process, with threads, and through joblib's Dask backend), pickling, thread settings."""
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import assert_close, load_example, report, require

require("sklearn")
import joblib  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import (GridSearchCV, RandomizedSearchCV,  # noqa: E402
                                     TimeSeriesSplit)
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

import fastlstm as fl  # noqa: E402
from fastlstm import _threads, layers  # noqa: E402
from fastlstm.sklearn import LSTMClassifier, LSTMRegressor, _limited_threads, _windows  # noqa: E402

# With ``window`` set, the rows of X are the steps of one series and each prediction reads
# the rows before it: these checks assume independent rows or 2-D-only input.
WINDOWED_XFAILS = {
    "check_fit1d": "with window set a 1-D X is a univariate series, valid input",
    "check_methods_subset_invariance": "a step's window holds the rows before it, so "
                                       "predictions depend on the rows around each sample",
    "check_methods_sample_order_invariance": "shuffling the steps of a series changes every "
                                             "window",
}


def expected_failed_checks(estimator):
    return WINDOWED_XFAILS if estimator.window is not None else {}


@pytest.mark.slow
@parametrize_with_checks([LSTMRegressor(random_state=0), LSTMClassifier(random_state=0),
                          LSTMRegressor(window=2, random_state=0),
                          LSTMClassifier(window=2, random_state=0)],
                         expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def blas_threads():
    return sorted({pool["num_threads"] for pool in threadpool_info()
                   if pool["user_api"] == "blas"})


@pytest.fixture
def restore_threads():
    """Put fastlstm's thread setting back after the test, whatever it did."""
    saved = _threads.requested_threads()
    yield
    _threads.set_num_threads(saved)


def sequences(n, T, F, rng):
    """x (n, T, F); y (n, 2): the mean of the last 3 steps of feature 0, and of feature -1."""
    x = rng.standard_normal((n, T, F))
    y = np.stack([x[:, -3:, 0].mean(axis=1), x[:, -3:, -1].mean(axis=1)], axis=1)
    return x, y


def test_regressor_3d_multioutput_learns():
    rng = np.random.default_rng(0)
    x, y = sequences(300, 8, 3, rng)
    x_test, y_test = sequences(100, 8, 3, rng)
    reg = LSTMRegressor(hidden_size=16, epochs=30, random_state=0).fit(x, y)
    y_hat = reg.predict(x_test)
    score = reg.score(x_test, y_test)
    print(f"3-D multi-output R^2 {score:.3f}")
    assert y_hat.shape == (100, 2) and y_hat.dtype == np.float64
    assert reg.input_shape_ == (8, 3) and reg.n_features_in_ == 8 and reg.n_outputs_ == 2
    assert len(reg.loss_curve_) == 30 and reg.loss_curve_[-1] < reg.loss_curve_[0]
    assert score > 0.8


def test_univariate_2d_equals_3d_with_one_feature():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((60, 7)), rng.standard_normal(60)
    a = LSTMRegressor(hidden_size=5, epochs=3, random_state=3).fit(x, y)
    b = LSTMRegressor(hidden_size=5, epochs=3, random_state=3).fit(x[:, :, None], y)
    assert a.input_shape_ == b.input_shape_ == (7, 1)
    assert np.array_equal(a.predict(x), b.predict(x[:, :, None]))
    assert np.array_equal(a.predict(x), a.predict(x[:, :, None]))


def test_classifier_string_labels_3d():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((240, 6, 2))
    labels = np.array(["down", "flat", "up"])
    y = labels[np.digitize(x[:, -2:, 0].sum(axis=1), [-0.6, 0.6])]
    clf = LSTMClassifier(hidden_size=16, epochs=25, random_state=0).fit(x[:180], y[:180])
    proba = clf.predict_proba(x[180:])
    accuracy = clf.score(x[180:], y[180:])
    print(f"3-class accuracy {accuracy:.3f}, majority {np.mean(y[180:] == 'flat'):.3f}")
    assert list(clf.classes_) == ["down", "flat", "up"]
    assert proba.shape == (60, 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(clf.predict(x[180:]), clf.classes_[proba.argmax(axis=1)])
    assert accuracy > 0.75


def test_windows_are_the_steps_before_each_row():
    series = np.arange(12.0).reshape(6, 2)
    windows = _windows(series, 3)
    expected = np.stack([series[np.clip(np.arange(t - 2, t + 1), 0, None)] for t in range(6)])
    assert windows.shape == (6, 3, 2) and windows.flags.c_contiguous
    assert np.array_equal(windows, expected)
    assert np.array_equal(windows[0], [[0, 1], [0, 1], [0, 1]])   # filled with row 0
    assert np.array_equal(windows[4], series[2:5])


def test_window_fits_like_the_complete_windows_cut_by_hand():
    """window=w on a series is the 3-D estimator on its complete windows; predictions keep
    one row per step."""
    rng = np.random.default_rng(4)
    series = np.sin(np.arange(120) * 0.3)[:, None] + 0.1 * rng.standard_normal((120, 1))
    target = np.roll(series[:, 0], -1)[:-1]            # next value
    series = series[:-1]
    w = 6
    windowed = LSTMRegressor(window=w, hidden_size=8, epochs=4, random_state=5)
    windowed.fit(series, target)
    by_hand = LSTMRegressor(hidden_size=8, epochs=4, random_state=5)
    by_hand.fit(_windows(series, w)[w - 1:], target[w - 1:])
    predictions = windowed.predict(series)
    assert predictions.shape == (len(series),)
    # same network; only the batch composition of predict differs (float32 kernels)
    assert_close("window vs by hand", predictions[w - 1:],
                 by_hand.predict(_windows(series, w)[w - 1:]), 2e-5)
    assert np.array_equal(windowed.predict(series[:, 0]), predictions)     # 1-D series
    assert windowed.n_features_in_ == 1 and windowed.input_shape_ == (w, 1)


@pytest.mark.parametrize("estimator, x, y, message", [
    (LSTMRegressor(window=3), np.zeros((5, 4, 2)), np.zeros(5), "one series"),
    (LSTMRegressor(window=8), np.zeros((5, 2)), np.zeros(5), "at least 8 steps"),
    (LSTMRegressor(hidden_size=0), np.zeros((5, 4)), np.zeros(5), "hidden_size"),
    (LSTMRegressor(dropout=1.0), np.zeros((5, 4)), np.zeros(5), "dropout"),
    (LSTMRegressor(optimizer="adagrad"), np.zeros((5, 4)), np.zeros(5), "optimizer"),
    (LSTMRegressor(learning_rate=0), np.zeros((5, 4)), np.zeros(5), "learning_rate"),
    (LSTMRegressor(weight_decay=-1), np.zeros((5, 4)), np.zeros(5), "weight_decay"),
    (LSTMClassifier(), np.zeros((5, 4)), np.ones(5), "2 classes"),
])
def test_bad_input_raises_naming_it(estimator, x, y, message):
    with pytest.raises(ValueError, match=message):
        estimator.fit(x, y)


def test_predict_checks_the_sample_shape():
    rng = np.random.default_rng(6)
    reg = LSTMRegressor(hidden_size=4, epochs=1, random_state=0)
    reg.fit(rng.standard_normal((20, 5, 2)), rng.standard_normal(20))
    with pytest.raises(ValueError, match=r"\(5, 2\) as in fit, got \(5, 3\)"):
        reg.predict(rng.standard_normal((4, 5, 3)))
    with pytest.raises(ValueError, match="expecting 5 features"):
        reg.predict(rng.standard_normal((4, 6, 2)))


def test_hyperparameters_shape_the_network():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((20, 4, 3)), rng.integers(0, 3, 20)
    clf = LSTMClassifier(hidden_size=6, num_layers=2, dropout=0.25, weight_decay=1e-3,
                         optimizer="sgd", clipnorm=0.5, learning_rate=0.02, epochs=1,
                         random_state=0).fit(x, y)
    kinds = [type(layer) for layer in clf.model_.layers]
    assert kinds == [layers.LSTM, layers.Dropout, layers.LSTM, layers.Dropout, layers.Dense]
    assert [layer.units for layer in clf.model_.layers if hasattr(layer, "units")] == [6, 6, 3]
    assert clf.model_.layers[1].rate == 0.25
    opt = clf.model_.optimizer
    assert isinstance(opt, fl.optim.SGD)
    assert (opt.lr, opt.weight_decay, opt.clipnorm) == (0.02, 1e-3, 0.5)


def test_pickle_round_trip_gives_identical_predictions():
    rng = np.random.default_rng(8)
    x, y = sequences(80, 5, 2, rng)
    reg = LSTMRegressor(hidden_size=8, epochs=3, random_state=0).fit(x, y[:, 0])
    clf = LSTMClassifier(hidden_size=8, epochs=3, random_state=0).fit(x, y[:, 0] > 0)
    for estimator, method in ((reg, "predict"), (clf, "predict_proba")):
        restored = pickle.loads(pickle.dumps(estimator))
        before, after = getattr(estimator, method)(x), getattr(restored, method)(x)
        report(f"pickled {type(estimator).__name__}", after, before)
        assert np.array_equal(before, after)
    assert np.array_equal(pickle.loads(pickle.dumps(clf)).predict(x), clf.predict(x))


def test_grid_search_over_lstm_hyperparameters():
    rng = np.random.default_rng(9)
    x, y = sequences(96, 5, 2, rng)
    grid = [{"hidden_size": [4, 8], "num_layers": [1, 2]},
            {"learning_rate": [1e-3, 2e-2], "batch_size": [8, 32]},
            {"dropout": [0.0, 0.3], "weight_decay": [0.0, 1e-3]}]
    search = GridSearchCV(LSTMRegressor(hidden_size=8, epochs=2, random_state=0), grid, cv=2)
    search.fit(x, y[:, 0])
    scores = search.cv_results_["mean_test_score"]
    print("grid:", [(params, round(score, 3)) for params, score
                    in zip(search.cv_results_["params"], scores)])
    print("best:", search.best_params_, round(search.best_score_, 3))
    assert len(scores) == 12 and np.all(np.isfinite(scores))
    assert search.best_params_ in search.cv_results_["params"]
    assert search.best_estimator_.get_params().items() >= search.best_params_.items()
    assert np.isfinite(search.score(x, y[:, 0]))


def test_window_is_searchable_on_a_series():
    t = np.arange(160)
    series = np.sin(2 * np.pi * t / 25) + 0.05 * np.random.default_rng(10).standard_normal(160)
    x, y = series[:-4], series[4:]                   # forecast 4 steps ahead
    search = GridSearchCV(LSTMRegressor(hidden_size=8, epochs=20, random_state=0),
                          {"window": [1, 10]}, cv=TimeSeriesSplit(3))
    search.fit(x, y)
    scores = dict(zip([p["window"] for p in search.cv_results_["params"]],
                      search.cv_results_["mean_test_score"]))
    print("R^2 by window:", scores)
    # one step cannot tell a rising sine from a falling one; ten steps can
    assert search.best_params_ == {"window": 10} and scores[10] > scores[1] + 0.15


def test_threads_set_inside_fit_and_restored(monkeypatch, restore_threads):
    seen = []
    fit = fl.Sequential.fit

    def recording_fit(self, *args, **kwargs):
        seen.append((fl.get_num_threads(), blas_threads()))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(fl.Sequential, "fit", recording_fit)
    fl.set_num_threads(2)
    before = blas_threads()
    rng = np.random.default_rng(11)
    LSTMRegressor(hidden_size=4, epochs=1, n_threads=1).fit(rng.standard_normal((10, 3)),
                                                            rng.standard_normal(10))
    LSTMRegressor(hidden_size=4, epochs=1).fit(rng.standard_normal((10, 3)),
                                               rng.standard_normal(10))
    # n_threads sets the kernels' threads (default: the process's setting); BLAS runs on
    # one thread either way
    assert seen == [(1, [1]), (min(2, _threads.usable_cores()), [1])]
    assert _threads.requested_threads() == 2 and blas_threads() == before


def test_concurrent_requests_share_the_smallest_and_restore_last(restore_threads):
    fl.set_num_threads(2)
    entered, release = threading.Event(), threading.Event()

    def hold():
        with _limited_threads(1):
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    entered.wait(10)
    with _limited_threads(2):
        assert _threads.requested_threads() == 1          # the other user's 1 holds
    assert _threads.requested_threads() == 1              # still running
    release.set()
    worker.join(10)
    assert _threads.requested_threads() == 2


def test_parallel_search_with_threads_matches_sequential(restore_threads):
    rng = np.random.default_rng(12)
    x, y = sequences(64, 4, 2, rng)
    distributions = {"hidden_size": [4, 8], "learning_rate": [1e-3, 1e-2],
                     "batch_size": [8, 16], "dropout": [0.0, 0.2]}
    fl.set_num_threads(2)
    results = []
    for n_jobs in (1, 2):
        with joblib.parallel_backend("threading"):
            search = RandomizedSearchCV(LSTMRegressor(epochs=2, random_state=0), distributions,
                                        n_iter=4, cv=2, n_jobs=n_jobs, random_state=0)
            search.fit(x, y[:, 1])
        results.append(search.cv_results_["mean_test_score"])
    report("threaded search vs sequential", results[1], results[0])
    assert np.array_equal(results[0], results[1])
    assert _threads.requested_threads() == 2


@pytest.mark.slow
def test_search_through_dask_on_a_local_cluster(restore_threads):
    require("dask.distributed")
    example = load_example("search_dask")
    figures = example.main(n_iter=4, cv=2, n_train=90, n_test=60, epochs=3)
    print(figures)
    # the fits ran as Dask tasks (joblib batches them) on both workers
    assert figures["workers"] == figures["workers_used"] == 2 and figures["fits"] == 8
    space = example.search_space()
    for name, value in figures["best_params"].items():
        if isinstance(space[name], list):
            assert value in space[name]
        else:
            assert space[name].a <= value <= space[name].b
    assert figures["test_accuracy"] > 1 / 3


def test_import_fastlstm_does_not_import_sklearn():
    code = ("import sys, fastlstm as fl; fl.Sequential; fl.layers; fl.optim; "
            "assert 'sklearn' not in sys.modules, 'sklearn imported'; "
            "import fastlstm.sklearn; assert 'sklearn' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_clone_keeps_parameters_and_drops_fit():
    reg = LSTMRegressor(hidden_size=3, window=4, optimizer="rmsprop").fit(np.arange(20.0),
                                                                         np.arange(20.0))
    copy = clone(reg)
    assert copy.get_params() == reg.get_params() and not hasattr(copy, "model_")
