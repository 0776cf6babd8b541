"""A title nobody has liked is still retrieved, through its text, for the users whose tastes it matches."""

import numpy as np
import tensorflow as tf

from animerec import features as f
from animerec.model import retrieval
from animerec.model.data import Catalog, TrainingData

N_KNOWN = 20  # anime 0-9 are "mecha" titles, 10-19 "romance" titles
COLD_MECHA, COLD_ROMANCE = 20, 21


def _tokens(group: int, rng) -> dict:
    # Group words 1-4 (mecha) or 5-8 (romance), plus shared filler words 9-12.
    words = np.arange(1, 5) if group == 0 else np.arange(5, 9)
    out = {}
    for name, length in f.TEXT_MAX_TOKENS.items():
        row = np.zeros(length, np.int64)
        n = min(length, 4)
        row[:n] = np.concatenate([rng.choice(words, 2), rng.choice(np.arange(9, 13), n - 2)])
        out[name] = row
    return out


def _data() -> TrainingData:
    rng = np.random.default_rng(0)
    groups = [0] * 10 + [1] * 10 + [0, 1]
    tokens = [_tokens(g, rng) for g in groups]
    catalog = Catalog(
        anime_id=np.arange(len(groups)) + 1000,
        anime_index=np.array(list(range(N_KNOWN)) + [N_KNOWN, N_KNOWN]),
        titles=np.array([b"t"] * len(groups)),
        genres=np.array([b"g"] * len(groups)),
        tokens={name: np.stack([t[name] for t in tokens]) for name in f.TEXT_MAX_TOKENS},
        mal_score=np.full(len(groups), 7.0, np.float32),
        members=np.full(len(groups), 1000),
    )
    users, items = [], []
    for user in range(60):
        group_items = np.arange(10) + (0 if user % 2 == 0 else 10)
        for item in rng.choice(group_items, 6, replace=False):
            users.append(user)
            items.append(item)
    users, items = np.array(users), np.array(items)
    n_users = 61
    splits = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=splits[1:])
    return TrainingData(
        user_vocab_size=60,
        anime_vocab_size=N_KNOWN,
        text_vocab_sizes={name: 13 for name in f.TEXT_MAX_TOKENS},
        catalog=catalog,
        user_index=users,
        anime_index=items,
        weight=np.ones(len(users), np.float32),
        user_ids=np.append(np.arange(60), -1),
        history_splits=splits,
        history_values=items,
        seen_splits=splits,
        seen_values=items,
    )


def test_cold_start_titles_are_retrieved_through_text():
    data = _data()
    tf.keras.utils.set_random_seed(3)
    model = retrieval.build_model(data, 16, temperature=0.1, learning_rate=0.02)
    model.fit(retrieval.training_dataset(data, batch_size=64), epochs=40, verbose=0)
    candidates = retrieval.catalog_embeddings(model, data)
    queries = retrieval.query_embeddings(model, data, np.arange(60))
    scores = queries @ candidates.T
    mecha_fans = np.arange(0, 60, 2)
    romance_fans = np.arange(1, 60, 2)
    prefers_mecha = scores[:, COLD_MECHA] > scores[:, COLD_ROMANCE]
    assert prefers_mecha[mecha_fans].mean() >= 0.9
    assert (~prefers_mecha[romance_fans]).mean() >= 0.9
    # And the cold title ranks among a fan's top titles of the catalog, not just above its rival.
    ranks = (scores[mecha_fans] > scores[mecha_fans, COLD_MECHA][:, None]).sum(axis=1)
    assert np.median(ranks) < 11, "a cold mecha title should rank within the mecha half of the catalog"
