"""A hand-made TrainingData: six anime (two of them cold-start), three users."""

import numpy as np

from animerec import features as f
from animerec.model.data import Catalog, TrainingData

ANIME_IDS = np.array([10, 20, 30, 40, 50, 60])
USER_IDS = np.array([100, 101, 102])
ANIME_VOCAB = 4  # anime 50 and 60 were never liked: index 4 is out of vocabulary


def small_training_data(seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    catalog = Catalog(
        anime_id=ANIME_IDS,
        anime_index=np.array([0, 1, 2, 3, ANIME_VOCAB, ANIME_VOCAB]),
        titles=np.array([f"Title {i}".encode() for i in ANIME_IDS]),
        genres=np.array([b"Action", b"Drama", b"Action, Comedy", b"Drama", b"Action", b"Comedy"]),
        tokens={name: rng.integers(1, 6, size=(6, length)) for name, length in f.TEXT_MAX_TOKENS.items()},
        mal_score=np.array([8.1, 7.5, 0.0, 6.9, 7.2, 8.8], np.float32),
        members=np.array([5000, 300, 0, 1200, 40, 90000]),
    )
    # Liked rows: user 0 likes 10, 20; user 1 likes 20, 30, 40; user 2 likes 10.
    user_index = np.array([0, 0, 1, 1, 1, 2])
    anime_index = np.array([0, 1, 1, 2, 3, 0])
    n_users = len(USER_IDS) + 1
    history_splits = np.array([0, 2, 5, 6, 6])
    history_values = anime_index.copy()
    # Seen (catalog positions): liked rows plus user 0 dropped anime 30 (position 2).
    seen_rows = [[0, 1, 2], [1, 2, 3], [0], []]
    seen_splits = np.cumsum([0] + [len(r) for r in seen_rows])
    seen_values = np.array([p for r in seen_rows for p in r])
    user_ids = np.full(n_users, -1)
    user_ids[:3] = USER_IDS
    return TrainingData(
        user_vocab_size=len(USER_IDS),
        anime_vocab_size=ANIME_VOCAB,
        text_vocab_sizes={name: 6 for name in f.TEXT_MAX_TOKENS},
        catalog=catalog,
        user_index=user_index,
        anime_index=anime_index,
        weight=np.full(6, 0.9, np.float32),
        user_ids=user_ids,
        history_splits=history_splits,
        history_values=history_values,
        seen_splits=seen_splits,
        seen_values=seen_values,
    )


def export_small_model(path: str) -> str:
    """small_training_data's model, trained briefly and exported to `path` (top 4)."""
    import tensorflow as tf

    from animerec.model import export, retrieval

    data = small_training_data()
    tf.keras.utils.set_random_seed(0)
    model = retrieval.build_model(data, 8, temperature=0.1, learning_rate=0.05)
    model.fit(retrieval.training_dataset(data, batch_size=6), epochs=2, verbose=0)
    export.export_serving_model(model, data, retrieval.catalog_embeddings(model, data), top_k=4, path=path)
    return path
