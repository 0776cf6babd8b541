"""Retrieval metrics, baselines and the blessing decision: pure numpy, no Beam or MLMD."""

from __future__ import annotations

import dataclasses

import numpy as np

KS = (10, 50, 100)


def top_k(scores: np.ndarray, k: int, batch: int = 1024) -> np.ndarray:
    """Indices of the k highest scores per row; ties go to the lower index."""
    k = min(k, scores.shape[1])
    return (
        np.concatenate(
            [np.argsort(-scores[i : i + batch], axis=1, kind="stable")[:, :k] for i in range(0, len(scores), batch)]
        )
        if len(scores)
        else np.zeros((0, k), dtype=np.int64)
    )


def retrieval_metrics(ranked: np.ndarray, truth: list[set], catalog_size: int, ks=KS) -> dict[str, float]:
    """Recall@k, NDCG@k and hit rate@k averaged over users, and coverage of the top-50 lists.

    ranked: [users, >= max(ks)] item ids, best first (-1 pads short lists).
    truth: each user's held-out items (users with none must be left out).
    """
    if len(ranked) != len(truth):
        raise ValueError(f"ranked has {len(ranked)} users, truth {len(truth)}")
    hits = np.array([[item in items for item in row] for row, items in zip(ranked, truth)], dtype=bool)
    n_truth = np.array([len(items) for items in truth], dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    metrics = {}
    for k in ks:
        hits_k = hits[:, :k]
        metrics[f"recall@{k}"] = float(np.mean(hits_k.sum(axis=1) / n_truth))
        dcg = (hits_k * discounts[:k]).sum(axis=1)
        ideal = np.array([discounts[: int(min(n, k))].sum() for n in n_truth])
        metrics[f"ndcg@{k}"] = float(np.mean(dcg / ideal))
        metrics[f"hit_rate@{k}"] = float(np.mean(hits_k.any(axis=1)))
    top50 = ranked[:, :50]
    metrics["coverage@50"] = float(len(np.unique(top50[top50 >= 0])) / catalog_size)
    metrics["users"] = int(len(truth))
    return metrics


def recall_curve(ranked: np.ndarray, truth: list[set], ks) -> list[float]:
    hits = np.array([[item in items for item in row] for row, items in zip(ranked, truth)], dtype=bool)
    n_truth = np.array([len(items) for items in truth], dtype=np.float64)
    return [float(np.mean(hits[:, :k].sum(axis=1) / n_truth)) for k in ks]


def popularity_scores(liked_positions: np.ndarray, catalog_size: int) -> np.ndarray:
    """Liked-row counts per catalog position."""
    return np.bincount(liked_positions, minlength=catalog_size).astype(np.float32)


def ease_item_weights(user_rows: np.ndarray, item_cols: np.ndarray, n_items: int, l2: float) -> np.ndarray:
    """EASE (Steck, 2019): B = I - P / diag(P), P = (X'X + l2 I)^-1, over n_items columns."""
    from scipy import sparse  # noqa: PLC0415

    # Sparse X: a dense users x items matrix would be 11 GB for MAL's 350k users.
    x = sparse.csr_matrix(
        (np.ones(len(user_rows), np.float64), (user_rows, item_cols)), shape=(int(user_rows.max()) + 1, n_items)
    )
    x.data[:] = 1.0  # a (user, item) pair listed twice is still one interaction
    gram = (x.T @ x).toarray()
    gram[np.diag_indices(n_items)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices(n_items)] = 0.0
    return b.astype(np.float32)


def mask_seen(scores: np.ndarray, seen_rows: np.ndarray, seen_cols: np.ndarray) -> np.ndarray:
    scores = scores.copy()
    scores[seen_rows, seen_cols] = -np.inf
    return scores


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """When a model is blessed, on `metric` (recall@50 by default).

    min_value: absolute floor. min_lift_over_popularity: the model must reach
    popularity * (1 + lift). max_regression: the model may trail the last
    blessed model, re-evaluated on the same split, by at most this much (absolute).
    """

    metric: str = "recall@50"
    min_value: float = 0.05
    min_lift_over_popularity: float = 0.1
    max_regression: float = 0.01


def decide_blessing(metrics: dict[str, dict], gate: GateConfig) -> tuple[bool, list[str]]:
    """Blessed only if every check passes; returns the verdict and one line per check."""
    name = gate.metric
    value = metrics["model"][name]
    reasons = []
    ok = True
    passed = value >= gate.min_value
    ok &= passed
    reasons.append(
        f"{'PASS' if passed else 'FAIL'}: {name} {value:.4f} {'>=' if passed else '<'} threshold {gate.min_value:.4f}"
    )
    popularity = metrics["popularity"][name]
    needed = popularity * (1.0 + gate.min_lift_over_popularity)
    passed = value >= needed
    ok &= passed
    reasons.append(
        f"{'PASS' if passed else 'FAIL'}: {name} {value:.4f} {'>=' if passed else '<'} popularity {popularity:.4f} x {1 + gate.min_lift_over_popularity:.2f} = {needed:.4f}"
    )
    if "last_blessed" in metrics:
        previous = metrics["last_blessed"][name]
        passed = value >= previous - gate.max_regression
        ok &= passed
        reasons.append(
            f"{'PASS' if passed else 'FAIL'}: {name} {value:.4f} {'>=' if passed else '<'} last blessed model {previous:.4f} - tolerance {gate.max_regression:.4f}"
        )
    else:
        reasons.append("PASS: no earlier blessed model to compare against")
    return ok, reasons
