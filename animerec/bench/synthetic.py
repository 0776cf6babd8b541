"""Full-size model inputs from random arrays, for the benchmarks only: training data of the
real size with random ids, and a second stage of the default size with random weights."""

from __future__ import annotations

import numpy as np

from animerec import features as f


def synthetic_training_data(users: int, anime: int, history: int, seen: int, seed: int = 0):
    """TrainingData of the real size with random ids: for benchmarks only."""
    from animerec.model.data import Catalog, TrainingData

    rng = np.random.default_rng(seed)
    catalog = Catalog(
        anime_id=np.sort(rng.choice(np.arange(1, anime * 3), anime, replace=False)),
        anime_index=np.arange(anime),
        titles=np.array([f"Anime {i}".encode() for i in range(anime)]),
        genres=np.array([b"Action, Drama"] * anime),
        tokens={
            name: rng.integers(0, f.TEXT_VOCAB_SIZE[name], (anime, length))
            for name, length in f.TEXT_MAX_TOKENS.items()
        },
        mal_score=np.full(anime, 7.0, np.float32),
        members=np.full(anime, 1000),
    )

    def csr(mean: int):
        lengths = np.minimum(rng.geometric(1.0 / mean, users), anime // 2)
        splits = np.zeros(users + 2, np.int64)
        np.cumsum(lengths, out=splits[1:-1])
        splits[-1] = splits[-2]  # the empty row for unknown users
        return splits, rng.integers(0, anime, int(splits[-1]))

    history_splits, history_values = csr(history)
    seen_splits, seen_values = csr(seen)
    return TrainingData(
        user_vocab_size=users,
        anime_vocab_size=anime,
        text_vocab_sizes=dict(f.TEXT_VOCAB_SIZE),
        catalog=catalog,
        user_index=history_values[:1000] * 0,
        anime_index=history_values[:1000],
        weight=np.ones(1000, np.float32),
        user_ids=np.append(np.arange(users), -1),
        history_splits=history_splits,
        history_values=history_values,
        seen_splits=seen_splits,
        seen_values=seen_values,
    )


def synthetic_second_stage(data, seed: int = 0):
    """A second stage of the default size with random weights (EASE over 8,000 titles at
    the default rank, the default item-kNN table, the default ranker and candidate counts): for benchmarks only."""
    from animerec.config import TrainingConfig
    from animerec.evaluation import EASE_MAX_ITEMS
    from animerec.model import ranking, two_stage

    config = TrainingConfig()
    rng = np.random.default_rng(seed)
    catalog_size = len(data.catalog.anime_id)
    items = rng.choice(catalog_size, min(EASE_MAX_ITEMS, catalog_size), replace=False)
    item_in = np.zeros((catalog_size, config.item_item_rank), np.float32)
    item_in[items] = rng.normal(size=(len(items), config.item_item_rank))
    item_out = rng.normal(size=(config.item_item_rank, len(items) + 1)).astype(np.float32)
    item_out[:, -1] = 0.0
    column = np.full(catalog_size, len(items), np.int32)
    column[items] = np.arange(len(items))
    genres = ranking.genre_matrix(data.catalog.tokens[f.GENRE_TOKENS] % 40, 40)
    neighbours = np.full((catalog_size, config.item_knn_neighbours), -1, np.int32)
    neighbours[items] = rng.choice(items, (len(items), config.item_knn_neighbours))
    features = ranking.RankingFeatures(
        item_in,
        item_out,
        column,
        neighbours,
        np.where(neighbours >= 0, rng.uniform(0, 1, neighbours.shape), 0.0).astype(np.float32),
        data.likes_by_catalog_position(),
        genres,
        data.catalog.mal_score,
        data.catalog.members,
        config.item_item_candidate_rank,
        config.item_item_candidate_titles,
    )
    width = len(ranking.FEATURE_NAMES)
    ranker = ranking.Ranker([0.0] * width, [1.0] * width, tuple(config.ranker_hidden_units[0]), config.ranker_members)
    ranker(np.zeros((1, 1, width), np.float32))  # builds its weights
    return two_stage.SecondStage(features, ranker, config.ranking_candidates, config.item_item_candidates, 0.25, {})
