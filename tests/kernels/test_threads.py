"""One thread pool at a time: NumPy's and SciPy's OpenBLAS are held to one thread while
fastlstm works (Sequential, the PyTorch-style modules), and restored afterwards."""
import threading

import numpy as np
import pytest

from conftest import require

import fastlstm as fl
from fastlstm import _threads
from fastlstm._threads import single_threaded_blas

threadpoolctl = require("threadpoolctl")


def blas_threads():
    """threadpoolctl's thread count of each BLAS pool loaded here."""
    return [pool["num_threads"] for pool in threadpoolctl.threadpool_info()
            if pool["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    """Every BLAS pool at two threads for the test (bundled OpenBLAS required)."""
    if not _threads.blas_pools():
        pytest.skip("NumPy and SciPy bring no OpenBLAS of their own here")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == [2] * len(blas_threads())
        yield


@pytest.fixture
def no_bundled_openblas(monkeypatch):
    """Pretend NumPy and SciPy bring no OpenBLAS; the real pools are found again after."""
    monkeypatch.setattr(_threads, "_bundled_openblas", lambda package: [])
    _threads.blas_pools.cache_clear()
    yield
    monkeypatch.undo()
    _threads.blas_pools.cache_clear()


def char_model():
    model = fl.Sequential([fl.layers.Embedding(10, 4, input_shape=(5,)),
                           fl.layers.LSTM(8, return_sequences=True),
                           fl.layers.Dense(10, activation="softmax")], seed=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    return model


def test_every_bundled_openblas_is_found(two_blas_threads):
    # threadpoolctl sees each pool the context controls, NumPy's and SciPy's
    assert len(_threads.blas_pools()) == len(blas_threads())
    for pool in _threads.blas_pools():
        assert pool.get_threads() == 2


def test_sequential_runs_every_blas_pool_on_one_thread_and_restores(two_blas_threads,
                                                                    monkeypatch):
    seen = []
    forward = fl.layers.Dense.forward

    def recording_forward(self, *args, **kwargs):
        seen.append(blas_threads())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(fl.layers.Dense, "forward", recording_forward)
    model = char_model()
    x = np.random.default_rng(0).integers(0, 10, (12, 5))
    calls = {"fit": lambda: model.fit(x, x, batch_size=4, epochs=2, verbose=0),
             "train_on_batch": lambda: model.train_on_batch(x, x),
             "evaluate": lambda: model.evaluate(x, x),
             "predict": lambda: model.predict(x)}
    for name, call in calls.items():
        seen.clear()
        call()
        assert seen and all(counts == [1] * len(counts) for counts in seen), (name, seen)
        assert blas_threads() == [2] * len(blas_threads()), name


def test_the_orthogonal_initializer_runs_every_blas_pool_on_one_thread(two_blas_threads,
                                                                      monkeypatch):
    # building a Keras-style LSTM (its recurrent kernel is orthogonal) must not start
    # NumPy's pool: it collapses under competing load and spins on after the QR
    seen = []
    qr = np.linalg.qr

    def recording_qr(*args, **kwargs):
        seen.append(blas_threads())
        return qr(*args, **kwargs)

    monkeypatch.setattr(np.linalg, "qr", recording_qr)
    char_model()
    assert len(seen) == 1 and seen[0] == [1] * len(seen[0])
    assert blas_threads() == [2] * len(blas_threads())


def test_linear_runs_every_blas_pool_on_one_thread_and_restores(two_blas_threads,
                                                                monkeypatch):
    from fastlstm import modules
    seen = []
    as_real_array = modules.as_real_array

    def recording(*args, **kwargs):
        seen.append(blas_threads())
        return as_real_array(*args, **kwargs)

    monkeypatch.setattr(modules, "as_real_array", recording)
    linear = fl.Linear(3, 2, seed=0)
    linear.backward(linear(np.ones((4, 3), np.float32)))
    assert len(seen) == 2 and all(counts == [1] * len(counts) for counts in seen)
    assert blas_threads() == [2] * len(blas_threads())


def test_nested_blocks_restore_at_the_outermost_exit(two_blas_threads):
    with single_threaded_blas():
        with single_threaded_blas():
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {1}
    assert set(blas_threads()) == {2}


def test_an_exception_restores_the_counts(two_blas_threads):
    with pytest.raises(RuntimeError, match="inside"):
        with single_threaded_blas():
            raise RuntimeError("inside")
    assert set(blas_threads()) == {2}


def test_overlapping_blocks_in_two_threads_restore_after_the_last(two_blas_threads):
    entered, release = threading.Event(), threading.Event()

    def hold():
        with single_threaded_blas():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    assert entered.wait(10)
    with single_threaded_blas():
        assert set(blas_threads()) == {1}
    assert set(blas_threads()) == {1}           # the other thread's block still holds
    release.set()
    worker.join(10)
    assert set(blas_threads()) == {2}


def test_without_bundled_openblas_the_block_changes_nothing(no_bundled_openblas):
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        assert _threads.blas_pools() == ()
        with single_threaded_blas():
            assert blas_threads() == before
        char_model().fit(np.zeros((4, 5), np.int64), np.zeros((4, 5), np.int64), verbose=0)
        assert blas_threads() == before


def test_a_library_without_thread_controls_is_skipped(tmp_path):
    from fastlstm._kernels import openmp
    assert _threads._openblas_pool(openmp.__file__) is None
    assert _threads._openblas_pool(str(tmp_path / "libopenblas-missing.so")) is None


def test_the_thread_setting_reaches_the_kernels_copy_in_c():
    """A stream step reads the setting in C (no Python per step): set_num_threads(1) keeps
    a stream that may split on one thread, and None gives the default back."""
    from fastlstm._kernels import openmp

    m = fl.LSTM(64, 300, seed=0).eval()       # 1.7 MB of weights: the stream may split
    saved = _threads.requested_threads()
    try:
        fl.set_num_threads(1)
        assert openmp.threads() == fl.get_num_threads() == 1
        assert openmp.requested_threads() == 1 and _threads.requested_threads() == 1
        assert not m.stream().split_next
        fl.set_num_threads(None)
        assert _threads.requested_threads() is None
        assert openmp.threads() == fl.get_num_threads() == min(_threads.usable_cores(),
                                                               openmp.max_threads())
        assert m.stream().split_next == (fl.get_num_threads() > 1)
    finally:
        fl.set_num_threads(saved)


@pytest.mark.parametrize("requested, cores", [(-1, 2), (1, 0)])
def test_the_kernels_thread_setting_refuses_bad_counts(requested, cores):
    from fastlstm._kernels import openmp

    with pytest.raises(ValueError, match="set_threads: expected requested >= 0"):
        openmp.set_threads(requested, cores)
