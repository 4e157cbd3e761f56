"""Keras-style stacked LSTMs tagging every step of a token sequence.

``Embedding`` + three stacked ``LSTM(128, return_sequences=True)`` +
``Dense(num_classes, activation="softmax")`` on every step, trained with categorical
cross-entropy (one-hot targets) and reporting accuracy. The tag of step t is the class of
the token two steps earlier (the first two steps are tagged 0), so the network must
carry information through time; chance accuracy is about 1/num_classes.

Run: ``python examples/keras_sequence_tagging.py`` (about 7 s on 2 cores).
"""
import time

import numpy as np

import fastlstm as fl

VOCAB, TIMESTEPS, NUM_CLASSES, DELAY = 20, 12, 4, 2


def make_data(n, rng):
    """tokens (n, 12) ints; one-hot tags (n, 12, 4) of the token DELAY steps before."""
    tokens = rng.integers(0, VOCAB, (n, TIMESTEPS))
    tags = np.zeros((n, TIMESTEPS), dtype=int)
    tags[:, DELAY:] = tokens[:, :-DELAY] % NUM_CLASSES
    return tokens, np.eye(NUM_CLASSES, dtype=np.float32)[tags]


def main(epochs=4, n_train=1500, n_test=300, seed=0, verbose=1):
    """Train and evaluate; returns the figures it prints."""
    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(n_train, rng)
    x_test, y_test = make_data(n_test, rng)

    model = fl.Sequential([
        fl.layers.Embedding(VOCAB, 32, input_shape=(TIMESTEPS,)),
        fl.layers.LSTM(128, return_sequences=True),
        fl.layers.LSTM(128, return_sequences=True),
        fl.layers.LSTM(128, return_sequences=True),
        fl.layers.Dense(NUM_CLASSES, activation="softmax"),
    ], seed=seed)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    if verbose:
        model.summary()

    started = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=32,
                        validation_data=(x_test, y_test), verbose=verbose)
    seconds = time.perf_counter() - started
    loss, accuracy = model.evaluate(x_test, y_test)
    chance = float(np.max(y_test.reshape(-1, NUM_CLASSES).mean(axis=0)))
    print(f"test accuracy {accuracy:.3f} (loss {loss:.3f}) vs majority-class {chance:.3f} "
          f"({epochs} epochs in {seconds:.1f} s)")
    return {"test_accuracy": accuracy, "test_loss": loss, "chance_accuracy": chance,
            "history": history.history, "seconds": seconds}


if __name__ == "__main__":
    main()
