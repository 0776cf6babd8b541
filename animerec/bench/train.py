"""`animerec bench train`: training examples per second of the default two-tower, fed as
the Trainer feeds it, against a naive TFRS baseline."""

import json
import time

import numpy as np

from animerec.bench.synthetic import synthetic_training_data


def bench_train(
    users: int = 4_000,
    anime: int = 17_500,
    rows: int = 1_000_000,
    batch_sizes: tuple[int, ...] = (1024, 4096, 8192),
    steps: int | None = None,
    progress=print,
) -> dict:
    """Training examples/s of the default model (text features, history tower, logQ) per
    batch size, fed the way the Trainer is: the liked rows held in memory, a new
    permutation each pass, with each row's liked history gathered beside the step; timed
    over one epoch of liked rows (or `steps`) after a warm-up.

    The data has MAL's shape where it sets the cost: 60% of rows liked, about 150 liked
    titles per user, the real text vocabulary sizes, and item popularity following a
    power law fitted to the real sample's liked rows (about 740 distinct titles per
    1,024 rows, 2,000 per 4,096).
    """
    import dataclasses

    from animerec.config import TrainingConfig
    from animerec.model import retrieval
    from animerec.model.data import _csr

    config = TrainingConfig()
    rng = np.random.default_rng(0)
    popularity = (np.arange(anime) + 30.0) ** -1.1
    user_index = rng.integers(0, users, rows)
    anime_index = rng.choice(anime, rows, p=popularity / popularity.sum())
    liked = rng.random(rows) < 0.6
    history_splits, history_values = _csr(user_index[liked], anime_index[liked], users + 1)
    data = dataclasses.replace(
        synthetic_training_data(users, anime, history=1, seen=1),
        history_splits=history_splits,
        history_values=history_values,
        user_index=user_index[liked],
        anime_index=anime_index[liked],
        weight=np.ones(int(liked.sum()), np.float32),
    )
    results = []
    for batch_size in batch_sizes:
        model = retrieval.build_model_from_config(data, config)
        dataset = retrieval.training_dataset(data, batch_size, repeat=True)
        model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)  # trace
        timed_steps = steps or data.liked_rows // batch_size
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=timed_steps, epochs=1, verbose=0)
        seconds = time.perf_counter() - start
        result = {"batch_size": batch_size, "examples_per_second": round(timed_steps * batch_size / seconds)}
        results.append(result)
        progress(f"batch {batch_size:>5}: {result['examples_per_second']:>8,} examples/s")
    naive = naive_tfrs_examples_per_second(users, anime, user_index[liked], anime_index[liked], steps or 40)
    progress(f"naive TFRS baseline (ids only, tfrs Retrieval task, batch 4096, dim 64): {naive:>8,} examples/s")
    return {
        "levels": results,
        "naive_tfrs_batch_4096": naive,
        "users": users,
        "anime": anime,
        "liked_rows": data.liked_rows,
    }


def naive_tfrs_examples_per_second(
    users: int, anime: int, user_index: np.ndarray, anime_index: np.ndarray, steps: int
) -> int:
    """The textbook setup the product replaced: id embeddings and tfrs.tasks.Retrieval."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    class Naive(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.users = tf.keras.layers.Embedding(users + 1, 64)
            self.items = tf.keras.layers.Embedding(anime + 1, 64)
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, inputs, training=False):
            u, a = inputs
            return self.task(self.users(u), self.items(a), compute_metrics=False, compute_batch_metrics=False)

    model = Naive()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.005))
    dataset = (
        tf.data.Dataset.from_tensor_slices((user_index, anime_index))
        .shuffle(100_000)
        .batch(4096, drop_remainder=True)
        .repeat()
    )
    model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return round(steps * 4096 / (time.perf_counter() - start))


def main(args) -> int:
    result = bench_train(
        rows=args.rows,
        batch_sizes=tuple(args.batch_sizes),
        steps=args.steps,
        progress=(lambda _: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(result))
    return 0
