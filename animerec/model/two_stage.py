"""Fitting the second stage on the validation split: candidates from the trained two-tower
and from the item-item table (EASE, L2 chosen on validation), the ranker (its shape chosen on
half of the validation users, fitted on all of them), and the tables the export ships.

Every choice here is made on validation rows carved out of train; the eval split is
never read.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf
from absl import logging

from animerec import evaluation
from animerec import features as f
from animerec.model import ranking, retrieval
from animerec.model.data import TrainingData

# Fewer validation users than this cannot choose or fit a ranker.
MIN_VALIDATION_USERS = 12
# Folds of validation users for choosing the ranker's shape by cross-fitting.
SELECTION_FOLDS = 3


@dataclasses.dataclass
class SecondStage:
    features: ranking.RankingFeatures
    ranker: ranking.Ranker
    candidates: int  # from the two-tower
    item_item_candidates: int
    popularity_prior: float
    report: dict


def liked_positions(data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    """The liked histories as CSR arrays of catalog positions."""
    return data.history_splits, data.catalog.positions_of_index(data.anime_vocab_size)[data.history_values]


def retrieval_scores(
    queries: np.ndarray,
    catalog_embeddings: np.ndarray,
    bias: np.ndarray,
    task: evaluation.EvalData,
    start: int,
    stop: int,
) -> np.ndarray:
    """Retrieval scores of task users [start, stop) (rows of `queries`) over the catalog, -inf where seen."""
    return evaluation.mask_seen(queries[start:stop] @ catalog_embeddings.T + bias, *task.seen_in(start, stop))


def retrieve(
    queries: np.ndarray,
    catalog_embeddings: np.ndarray,
    bias: np.ndarray,
    task: evaluation.EvalData,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The two-tower's top n unseen catalog positions for task.users, and their scores."""
    positions, scores = [], []
    for start in range(0, len(task.users), evaluation.SCORE_BATCH):
        stop = min(start + evaluation.SCORE_BATCH, len(task.users))
        block = retrieval_scores(queries, catalog_embeddings, bias, task, start, stop)
        top = evaluation.top_k(block, n)
        positions.append(top)
        scores.append(np.take_along_axis(block, top, axis=1))
    return np.concatenate(positions), np.concatenate(scores).astype(np.float32)


def padded_histories(splits: np.ndarray, values: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Rows `users` of a CSR table as a dense matrix padded with -1."""
    lengths = splits[users + 1] - splits[users]
    out = np.full((len(users), max(1, int(lengths.max(initial=0)))), -1, np.int32)
    for i, (start, length) in enumerate(zip(splits[users], lengths)):
        out[i, :length] = values[start : start + length]
    return out


def candidate_features(
    module: ranking.RankingFeatures,
    splits: np.ndarray,
    values: np.ndarray,
    queries: np.ndarray,
    catalog_embeddings: np.ndarray,
    bias: np.ndarray,
    task: evaluation.EvalData,
    retrieved: int,
    item_item_candidates: int,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates, features and presence for task.users (rows of `queries`), as serving computes them."""
    parts = []
    for start in range(0, len(task.users), batch_size):
        stop = min(start + batch_size, len(task.users))
        scores = retrieval_scores(queries, catalog_embeddings, bias, task, start, stop)
        history = padded_histories(splits, values, task.users[start:stop])
        out = module(tf.constant(history), tf.constant(scores, tf.float32), retrieved, item_item_candidates)
        parts.append([t.numpy() for t in out])
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def features_module(
    data: TrainingData, index: evaluation.EaseIndex, liked_position: np.ndarray, l2: float, config
) -> ranking.RankingFeatures:
    """RankingFeatures over liked rows (`index`, EASE over them; `liked_position`, all of
    them): EASE at l2 (config.item_item_rank, candidates chosen at
    config.item_item_candidate_rank among config.item_item_candidate_titles), each
    title's config.item_knn_neighbours nearest titles, popularity, genres, metadata."""
    rank, neighbours = config.item_item_rank, config.item_knn_neighbours
    catalog_size = len(data.catalog.anime_id)

    factors = ranking.ease_factors(index.eigen, index.items, catalog_size, l2, rank)
    factors += ranking.cosine_neighbours(index.gram, index.items, catalog_size, neighbours)
    likes = np.bincount(liked_position, minlength=catalog_size).astype(np.float64)
    genres = ranking.genre_matrix(data.catalog.tokens[f.GENRE_TOKENS], data.text_vocab_sizes[f.GENRE_TOKENS])
    return ranking.RankingFeatures(
        *factors,
        likes,
        genres,
        data.catalog.mal_score,
        data.catalog.members,
        config.item_item_candidate_rank,
        config.item_item_candidate_titles,
    )


class _Clock:
    """Seconds per phase, for the Trainer's report."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.time()

    def lap(self, phase: str) -> None:
        now = time.time()
        self.seconds[phase] = round(now - self._last, 1)
        self._last = now


def _recall(task: evaluation.EvalData, rows: np.ndarray, ranked: np.ndarray) -> float:
    return evaluation.retrieval_metrics(ranked[rows], [task.truth[i] for i in rows], task.catalog_size, ks=(50,))[
        "recall@50"
    ]


def fit_second_stage(model: retrieval.RetrievalModel, data: TrainingData, config) -> SecondStage | None:
    """Chooses and fits the second stage on `data`'s validation rows (see the module doc).

    None when there are fewer than MIN_VALIDATION_USERS validation users to learn from
    (a toy dataset): the model then serves retrieval alone.
    """
    clock = _Clock()
    if data.validation_splits is None:
        logging.warning("No validation split (validation_percent 0): the model serves retrieval alone.")
        return None
    task = data.validation_task(max_users=config.ranker_max_users)
    # EASE's L2 and the prior are chosen on at most VALIDATION_MAX_USERS users (as the
    # Evaluator chooses its baseline's L2); the ranker learns from the lists of up to
    # ranker_max_users, which costs far less a user than scoring the catalog at every L2.
    limit = evaluation.VALIDATION_MAX_USERS
    choice = task if len(task.users) <= limit else data.validation_task(max_users=limit)
    report: dict = {"validation_users": len(task.users), "choice_users": len(choice.users)}
    if len(task.users) < MIN_VALIDATION_USERS:
        logging.warning(
            "Only %d validation users (fewer than %d): the model serves retrieval alone.",
            len(task.users),
            MIN_VALIDATION_USERS,
        )
        return None
    # Over every user's liked rows: the same for both tasks.
    ease_index = evaluation.EaseIndex.of(task)
    l2, l2_scores = evaluation.tune_ease_l2(choice, config.ease_l2_grid, ease_index)
    clock.lap("ease_l2")
    report["ease_l2"], report["ease_l2_validation_recall@50"] = l2, {str(k): v for k, v in l2_scores.items()}

    n = min(config.ranking_candidates, task.catalog_size)
    embeddings = retrieval.catalog_embeddings(model, data)
    queries = retrieval.query_embeddings(model, data, task.users)
    choice_queries = queries if choice is task else retrieval.query_embeddings(model, data, choice.users)
    recall_at_n, retrieved = {}, {}
    for prior in config.popularity_prior_grid:
        bias = retrieval.popularity_bias(data, prior, config.temperature)
        retrieved[prior] = retrieve(choice_queries, embeddings, bias, choice, n)
        recall_at_n[prior] = evaluation.retrieval_metrics(
            retrieved[prior][0], choice.truth, choice.catalog_size, ks=(n,)
        )[f"recall@{n}"]
    prior = max(recall_at_n, key=lambda p: (recall_at_n[p], -p))
    report["popularity_prior"], report[f"retrieval_validation_recall@{n}"] = (
        prior,
        {str(k): v for k, v in recall_at_n.items()},
    )

    clock.lap("popularity_prior")
    fit_module = features_module(data, ease_index, task.liked_position, l2, config)
    splits, values = liked_positions(data)
    bias = retrieval.popularity_bias(data, prior, config.temperature)
    candidates, features, present = candidate_features(
        fit_module,
        splits,
        values,
        queries,
        embeddings,
        bias,
        task,
        n,
        min(config.item_item_candidates, task.catalog_size),
    )
    labels = np.array([[p in truth for p in row] for row, truth in zip(candidates, task.truth)], np.float32)
    labels *= present
    report["candidate_validation_recall"] = float(np.mean(labels.sum(axis=1) / [len(t) for t in task.truth]))

    clock.lap("features")
    # Each ranker shape is scored by cross-fitting: fitted on all folds of the validation
    # users but one and scored on that one, in turn, so that every user counts.
    everyone = np.arange(len(task.users))
    # Retrieval alone and EASE over the choice users; the candidates and rankers over the
    # ranker's (the same users when there are at most VALIDATION_MAX_USERS).
    choices = {
        "candidates (recall@N)": report["candidate_validation_recall"],
        "retrieval only": _recall(choice, np.arange(len(choice.users)), retrieved[prior][0]),
        "ease": l2_scores[l2],
    }
    fold = everyone % SELECTION_FOLDS
    shapes = [tuple(h) for h in config.ranker_hidden_units]
    # With one shape there is nothing to choose: no cross-fitting.
    for hidden in shapes if len(shapes) > 1 else []:
        reranked = np.full_like(candidates, -1)
        for held in range(SELECTION_FOLDS):
            fitting, scoring = everyone[fold != held], everyone[fold == held]
            ranker = ranking.fit_ranker(
                features[fitting],
                labels[fitting],
                present[fitting],
                tuple(hidden),
                config.ranker_epochs,
                config.ranker_max_steps,
                config.ranker_members,
                seed=config.seed,
            )
            order = ranking.rerank(ranker, features[scoring], present[scoring])
            reranked[scoring] = np.where(
                np.take_along_axis(present[scoring], order, axis=1),
                np.take_along_axis(candidates[scoring], order, axis=1),
                -1,
            )
        choices[f"ranker {list(hidden)}"] = _recall(task, everyone, reranked)
    clock.lap("ranker_shape")
    best = max(shapes, key=lambda h: choices.get(f"ranker {list(h)}", 0.0))
    report["validation_recall@50"] = choices
    report["ranker_hidden_units"] = list(best)
    logging.info("Second stage chosen on validation: %s", report)

    ranker = ranking.fit_ranker(
        features,
        labels,
        present,
        tuple(best),
        config.ranker_epochs,
        config.ranker_max_steps,
        config.ranker_members,
        seed=config.seed,
    )
    clock.lap("ranker")
    full = data.with_validation_in_history()
    splits, values = liked_positions(full)
    users = np.repeat(np.arange(len(splits) - 1), np.diff(splits))
    serving_index = evaluation.EaseIndex(users, values, task.catalog_size)
    serving_module = features_module(full, serving_index, values, l2, config)
    clock.lap("serving_tables")
    report["seconds"] = clock.seconds
    return SecondStage(serving_module, ranker, config.ranking_candidates, config.item_item_candidates, prior, report)
