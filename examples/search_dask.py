"""Hyperparameter search for an LSTM classifier through joblib's Dask backend.

``RandomizedSearchCV`` over ``fastlstm.sklearn.LSTMClassifier`` (hidden size, layers,
learning rate, batch size, dropout, L2), each cross-validation fit a task for a Dask
worker. Without an address the script starts a ``LocalCluster`` of single-threaded
workers; give the address of a running scheduler and the same code spreads the fits over
that cluster (every worker needs fastlstm installed)::

    python examples/search_dask.py                          # LocalCluster, 2 workers
    python examples/search_dask.py tcp://scheduler:8786     # a real cluster

Each estimator keeps fastlstm's kernels to one thread (``n_threads=1``): the parallelism
comes from running fits side by side, one per worker thread.

The task: tell apart noisy sine waves of three frequencies (labels "slow", "medium",
"fast") from 30 samples each; chance accuracy is about 1/3.
"""
import sys
import time

import numpy as np

LABELS = np.array(["slow", "medium", "fast"])
FREQUENCIES = np.array([0.04, 0.09, 0.18])
STEPS = 30


def make_data(n, rng):
    """x (n, 30) univariate sequences (noisy sines, random phase and amplitude); labels (n,)."""
    classes = rng.integers(0, len(LABELS), n)
    t = np.arange(STEPS)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amplitude = rng.uniform(0.5, 1.5, (n, 1))
    x = amplitude * np.sin(2 * np.pi * FREQUENCIES[classes][:, None] * t + phase)
    x += 0.8 * rng.standard_normal(x.shape)
    return x.astype(np.float32), LABELS[classes]


def search_space():
    """The hyperparameters LSTM users tune, as RandomizedSearchCV distributions."""
    from scipy.stats import loguniform
    return {
        "hidden_size": [8, 16, 32],
        "num_layers": [1, 2],
        "learning_rate": loguniform(3e-3, 3e-2),
        "batch_size": [16, 32, 64],
        "dropout": [0.0, 0.2],
        "weight_decay": [0.0, 1e-4],
    }


def _rounded(params):
    """Parameters for printing: floats as plain floats of 5 significant digits."""
    return {k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in params.items()}


def main(address=None, n_iter=8, cv=3, n_train=300, n_test=200, epochs=10, n_workers=2,
         processes=False, seed=0):
    """Run the search on the cluster at ``address`` (None: a LocalCluster of ``n_workers``
    single-threaded workers, in-process threads unless ``processes``); returns its figures."""
    import joblib
    from dask.distributed import Client, LocalCluster, get_task_stream
    from sklearn.model_selection import RandomizedSearchCV

    from fastlstm.sklearn import LSTMClassifier

    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(n_train, rng)
    x_test, y_test = make_data(n_test, rng)
    search = RandomizedSearchCV(
        LSTMClassifier(epochs=epochs, random_state=seed, n_threads=1), search_space(),
        n_iter=n_iter, cv=cv, n_jobs=-1, random_state=seed)

    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1,
                               processes=processes, dashboard_address=None)
        address = cluster
    try:
        with Client(address) as client, joblib.parallel_backend("dask"), \
                get_task_stream(client) as tasks:
            workers = len(client.scheduler_info()["workers"])
            started = time.perf_counter()
            search.fit(x_train, y_train)
            seconds = time.perf_counter() - started
    finally:
        if cluster is not None:
            cluster.close()

    test_accuracy = search.score(x_test, y_test)
    params = _rounded(search.best_params_)
    busy = sorted({task["worker"] for task in tasks.data})
    print(f"{n_iter} candidates x {cv} folds: {len(tasks.data)} Dask tasks ran on "
          f"{len(busy)} of {workers} workers in {seconds:.1f} s")
    for rank, mean, candidate in sorted(zip(search.cv_results_["rank_test_score"],
                                            search.cv_results_["mean_test_score"],
                                            search.cv_results_["params"]),
                                        key=lambda row: row[0]):
        print(f"  rank {rank}: CV accuracy {mean:.3f}  {_rounded(candidate)}")
    print(f"best {params}: CV accuracy {search.best_score_:.3f}, test accuracy "
          f"{test_accuracy:.3f} (chance {1 / len(LABELS):.3f})")
    return {"best_params": params, "best_cv_accuracy": float(search.best_score_),
            "test_accuracy": float(test_accuracy), "workers": workers,
            "workers_used": len(busy), "tasks": len(tasks.data),
            "fits": n_iter * cv, "seconds": seconds}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
