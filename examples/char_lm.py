"""A character-level language model of Python's own documentation.

Data: the help texts Python ships in ``pydoc_data.topics`` (the language reference pages
that ``help("if")`` shows), about 460,000 characters of English, offline. The texts are
joined in sorted-topic order; the first 90 % train the model and the rest is held out.

Model (Keras style): ``Embedding`` -> ``LSTM(return_sequences=True)`` ->
``Dense(vocabulary, activation="softmax")`` on every step, trained with sparse categorical
cross-entropy to predict each next character. Reported: held-out perplexity,
``exp(mean cross-entropy per character)``, against a unigram baseline (each character's
training frequency, add-one smoothed), then text sampled from the model one character at
a time through the LSTM's streaming stepper (``fl.LSTM.stream``).

Run: ``python examples/char_lm.py`` (under a minute on 2 cores).
"""
import time

import numpy as np

import fastlstm as fl


def load_text():
    """Python's pydoc topic texts, joined in sorted-topic order."""
    from pydoc_data.topics import topics
    return "\n".join(topics[key] for key in sorted(topics))


def encode(text):
    """(codes as an int array, vocabulary as a list of characters)."""
    vocabulary = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocabulary)}
    return np.array([index[ch] for ch in text], dtype=np.int64), vocabulary


def sequences(codes, length):
    """Non-overlapping inputs (n, length) and next-character targets (n, length)."""
    n = (len(codes) - 1) // length
    x = codes[:n * length].reshape(n, length)
    y = codes[1:n * length + 1].reshape(n, length)
    return x, y


def unigram_perplexity(train_codes, test_codes, vocabulary_size):
    """Perplexity on ``test_codes`` of add-one smoothed training character frequencies."""
    counts = np.bincount(train_codes, minlength=vocabulary_size) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(np.exp(-np.mean(log_p[test_codes])))


def sample(model, vocabulary, prompt, length, rng, temperature=0.8):
    """Continue ``prompt`` by ``length`` characters drawn from the model, one step at a time."""
    embedding, rnn, head = model.layers
    index = {ch: i for i, ch in enumerate(vocabulary)}
    stream = rnn.lstm.stream()                          # stateful stepper, batch of one
    text = list(prompt)
    for ch in prompt:
        h = stream.step(embedding.embeddings[index[ch]])
    for _ in range(length):
        logits = (h @ head.kernel + head.bias) / temperature
        p = np.exp(logits - logits.max())
        code = rng.choice(len(vocabulary), p=p / p.sum())
        text.append(vocabulary[code])
        h = stream.step(embedding.embeddings[code])
    return "".join(text)


def main(epochs=4, n_chars=None, seq_length=64, hidden_size=128, batch_size=32,
         sample_length=300, seed=0, verbose=0):
    """Train, report held-out perplexity vs the unigram baseline, sample; returns figures.

    ``n_chars`` limits the text used (None: all of it).
    """
    text = load_text()[:n_chars]
    codes, vocabulary = encode(text)
    split = int(0.9 * len(codes))
    x_train, y_train = sequences(codes[:split], seq_length)
    x_val, y_val = sequences(codes[split:], seq_length)

    model = fl.Sequential([
        fl.layers.Embedding(len(vocabulary), 32, input_shape=(seq_length,)),
        fl.layers.LSTM(hidden_size, return_sequences=True),
        fl.layers.Dense(len(vocabulary), activation="softmax"),
    ], seed=seed)
    model.compile(loss="sparse_categorical_crossentropy",
                  optimizer=fl.optim.Adam(lr=0.01, clipnorm=1.0))
    started = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size,
                        verbose=verbose)
    seconds = time.perf_counter() - started

    perplexity = float(np.exp(model.evaluate(x_val, y_val, batch_size=256)))
    baseline = unigram_perplexity(codes[:split], y_val.ravel(), len(vocabulary))
    text_sample = sample(model, vocabulary, "The ", sample_length,
                         np.random.default_rng(seed))
    print(f"{len(codes):,} characters, vocabulary {len(vocabulary)}; {len(x_train)} training "
          f"sequences of {seq_length}, {epochs} epochs in {seconds:.1f} s")
    print(f"held-out perplexity {perplexity:.2f} vs unigram {baseline:.2f} "
          f"({baseline / perplexity:.2f}x lower)")
    print(f"sample:\n{text_sample}")
    return {"perplexity": perplexity, "unigram_perplexity": baseline, "seconds": seconds,
            "train_loss": history.history["loss"], "sample": text_sample,
            "characters": len(codes), "vocabulary_size": len(vocabulary)}


if __name__ == "__main__":
    main()
