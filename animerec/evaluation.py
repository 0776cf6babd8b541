"""Evaluation: retrieval metrics and slices, the popularity and EASE baselines (EASE's L2
tuned on validation), and the blessing decision. Pure numpy, no Beam or MLMD: the
RetrievalEvaluator component and the Trainer (validation) both use it.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from animerec.data import interactions
from animerec.ids import positions_in

KS = (10, 50, 100)
# Users by the number of titles they liked in training: slices of the metrics.
HISTORY_SLICES = ((1, 5), (6, 20), (21, 100), (101, None))
# EASE's L2 is chosen on validation among these (Steck's paper: a few hundred; on
# real MAL data 100 beat 200-1000 by a few percent).
EASE_L2_GRID = (50.0, 100.0, 200.0, 400.0, 800.0)
# EASE inverts an items x items matrix: it covers the most-liked titles up to this many.
EASE_MAX_ITEMS = 8000
# Users scored per block: a [block, catalog] matrix at a time.
SCORE_BATCH = 512
# Validation users sampled to choose hyperparameters (EASE's L2, the retrieval prior; the
# Evaluator's baseline EASE too): enough to rank the choices, and a bound on the work as
# the data grows (each is scored over the whole catalog at every value of its grid).
VALIDATION_MAX_USERS = 2000


def top_k(scores: np.ndarray, k: int, batch: int = 1024) -> np.ndarray:
    """Indices of the k highest scores per row, best first; ties go to the lower index."""
    k = min(k, scores.shape[1])
    if not len(scores) or k == 0:
        return np.zeros((len(scores), k), dtype=np.int64)
    return np.concatenate([_top_k_block(scores[i : i + batch], k) for i in range(0, len(scores), batch)])


def _top_k_block(scores: np.ndarray, k: int) -> np.ndarray:
    # A partition finds each row's k-th largest value; the k chosen are those above it
    # and the lowest-indexed ones equal to it, then only those k are sorted (stable, so
    # equal scores keep index order): no sort of the whole catalog.
    kth = np.take_along_axis(scores, np.argpartition(-scores, k - 1, axis=1)[:, k - 1 : k], axis=1)
    above = scores > kth
    tied = scores == kth
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= (k - above.sum(axis=1))[:, None]))
    indices = np.nonzero(chosen)[1].reshape(len(scores), k)
    order = np.argsort(-np.take_along_axis(scores, indices, axis=1), axis=1, kind="stable")
    return np.take_along_axis(indices, order, axis=1)


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


def likes_matrix(
    user_rows: np.ndarray, item_cols: np.ndarray, n_items: int, n_users: int | None = None, dtype=np.float64
):
    """The binary users x items matrix X, sparse (scipy CSR): a dense one would be 11 GB
    for MAL's 350k users. n_users: its rows (default: up to the largest user row)."""
    from scipy import sparse

    if n_users is None:
        n_users = int(user_rows.max()) + 1 if len(user_rows) else 1
    x = sparse.csr_matrix((np.ones(len(user_rows), dtype), (user_rows, item_cols)), shape=(n_users, n_items))
    x.data[:] = 1.0  # a (user, item) pair listed twice is still one interaction
    return x


def item_gram(user_rows: np.ndarray, item_cols: np.ndarray, n_items: int) -> np.ndarray:
    """X'X of likes_matrix, dense [n_items, n_items] float64."""
    x = likes_matrix(user_rows, item_cols, n_items)
    return (x.T @ x).toarray()


def ease_from_gram(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE (Steck, 2019): B = I - P / diag(P), P = (X'X + l2 I)^-1."""
    regularized = gram.copy()
    regularized[np.diag_indices(len(gram))] += l2
    p = np.linalg.inv(regularized)
    b = -p / np.diag(p)
    b[np.diag_indices(len(gram))] = 0.0
    return b.astype(np.float32)


def ease_item_weights(user_rows: np.ndarray, item_cols: np.ndarray, n_items: int, l2: float) -> np.ndarray:
    """EASE's item-item weights over n_items columns."""
    return ease_from_gram(item_gram(user_rows, item_cols, n_items), l2)


def mask_seen(scores: np.ndarray, seen_rows: np.ndarray, seen_cols: np.ndarray) -> np.ndarray:
    scores = scores.copy()
    scores[seen_rows, seen_cols] = -np.inf
    return scores


class EvalData:
    """A ranking task over catalog positions: whom to rank for, what they liked and saw
    before, and what they went on to like (the truth).

    `liked_user`/`liked_position`: the liked rows a ranker may learn from (any users).
    `seen_user`/`seen_position`: every row a user has seen (liked or not), excluded
    from their ranking. `truth_user`/`truth_position`: the held-out liked rows.
    Users are any integer keys (raw ids or indices); positions index the catalog.
    """

    def __init__(
        self,
        catalog_size: int,
        liked_user: np.ndarray,
        liked_position: np.ndarray,
        seen_user: np.ndarray,
        seen_position: np.ndarray,
        truth_user: np.ndarray,
        truth_position: np.ndarray,
        max_users: int | None = None,
    ):
        if np.any(truth_position < 0) or np.any(seen_position < 0) or np.any(liked_position < 0):
            raise ValueError("every evaluated row must name a catalog title (position >= 0)")
        self.catalog_size = catalog_size
        users = np.unique(truth_user)
        if max_users is not None and len(users) > max_users:
            users = np.sort(np.random.default_rng(0).choice(users, max_users, replace=False))
        self.users = users
        self.truth = [set() for _ in users]
        rows = positions_in(users, truth_user)
        for row, position in zip(rows[rows >= 0], truth_position[rows >= 0]):
            self.truth[row].add(int(position))
        self.liked_user, self.liked_position = liked_user, liked_position
        rows = positions_in(users, seen_user)
        self.seen_row, self.seen_col = rows[rows >= 0], seen_position[rows >= 0]
        rows = positions_in(users, liked_user)
        self.history_length = np.bincount(rows[rows >= 0], minlength=len(users))

    def seen_in(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Seen (row, column) pairs of users [start, stop), rows counted from start."""
        seen = (self.seen_row >= start) & (self.seen_row < stop)
        return self.seen_row[seen] - start, self.seen_col[seen]

    def metrics(self, ranked_positions: np.ndarray) -> dict:
        return retrieval_metrics(ranked_positions, self.truth, self.catalog_size)

    def slices(self, ranked_positions: np.ndarray, k: int = 50) -> dict:
        """Recall@k by liked-history length, and of cold titles (never liked in training)."""
        out = {}
        for low, high in HISTORY_SLICES:
            name = f"history {low}-{high}" if high else f"history >{low - 1}"
            keep = (self.history_length >= low) & (self.history_length <= (high or np.inf))
            out[name] = _sliced_recall(ranked_positions[keep], [self.truth[i] for i in np.flatnonzero(keep)], k)
        cold = np.bincount(self.liked_position, minlength=self.catalog_size) == 0
        truth = [{p for p in items if cold[p]} for items in self.truth]
        out["cold titles"] = _sliced_recall(ranked_positions, truth, k)
        return out


def _sliced_recall(ranked: np.ndarray, truth: list[set], k: int) -> dict:
    keep = [i for i, items in enumerate(truth) if items]
    if not keep:
        return {"users": 0, f"recall@{k}": None}
    got = retrieval_metrics(ranked[keep], [truth[i] for i in keep], 1, ks=(k,))
    return {"users": len(keep), f"recall@{k}": got[f"recall@{k}"]}


def rank_popularity(data: EvalData, k: int) -> np.ndarray:
    """Most-liked unseen titles first."""
    popularity = popularity_scores(data.liked_position, data.catalog_size)
    ranked = []
    for start in range(0, len(data.users), SCORE_BATCH):
        users = data.users[start : start + SCORE_BATCH]
        scores = np.tile(popularity, (len(users), 1))
        ranked.append(top_k(mask_seen(scores, *data.seen_in(start, start + len(users))), k))
    return np.concatenate(ranked) if ranked else np.zeros((0, k), np.int64)


def ease_inverse(eigen: tuple[np.ndarray, np.ndarray], l2: float) -> np.ndarray:
    """P = (G + l2 I)^-1 from eigenpairs (w, Q) of G that cover its nonzero eigenvalues:
    I / l2 + Q diag(1 / (w + l2) - 1 / l2) Q' (the directions outside Q have eigenvalue 0)."""
    w, q = eigen
    p = (q * (1.0 / (w + l2) - 1.0 / l2).astype(q.dtype)) @ q.T
    p[np.diag_indices(len(p))] += 1.0 / l2
    return p


def ease_inverse_diagonal(eigen: tuple[np.ndarray, np.ndarray], l2: float) -> np.ndarray:
    """The diagonal of ease_inverse(eigen, l2), without forming the matrix."""
    w, q = eigen
    return 1.0 / l2 + np.einsum("ij,j,ij->i", q, 1.0 / (w + l2) - 1.0 / l2, q)


class EaseIndex:
    """EASE over the most-liked titles (up to EASE_MAX_ITEMS) of liked (user, catalog position) rows.

    `items` are the catalog positions of B's rows and columns. The Gram matrix and its
    eigenpairs are kept: every L2 is then scored from one eigendecomposition (rank_each;
    weights and rank, through B, are the reference it is tested against).
    """

    def __init__(
        self,
        liked_user: np.ndarray,
        liked_position: np.ndarray,
        catalog_size: int,
        max_items: int = EASE_MAX_ITEMS,
        titles_eigen_dtype=np.float32,
    ):
        """titles_eigen_dtype: the precision of the titles-side eigendecomposition (eigen)."""
        self.titles_eigen_dtype = titles_eigen_dtype
        counts = np.bincount(liked_position, minlength=catalog_size)
        self.items = np.argsort(-counts, kind="stable")[: min(max_items, int((counts > 0).sum()))]
        self.column = np.full(catalog_size, -1)
        self.column[self.items] = np.arange(len(self.items))
        keep = self.column[liked_position] >= 0
        self.liked_user = liked_user[keep]
        self.liked_column = self.column[liked_position[keep]]
        _, user_rows = np.unique(self.liked_user, return_inverse=True)
        likes = likes_matrix(user_rows, self.liked_column, len(self.items))
        self.gram = (likes.T @ likes).toarray()
        # Kept only where eigen works from the users' side (fewer users than titles).
        self.likes = likes if likes.shape[0] < len(self.items) else None

    @classmethod
    def of(cls, data: EvalData, **options) -> EaseIndex:
        """Over the liked rows of a ranking task (options: the constructor's)."""
        return cls(data.liked_user, data.liked_position, data.catalog_size, **options)

    @functools.cached_property
    def eigen(self) -> tuple[np.ndarray, np.ndarray]:
        """The Gram matrix's eigenpairs (w, Q) with nonzero eigenvalues, or all of them:
        EASE at any L2 is then one product (ease_inverse). With fewer users than titles,
        from the users' side: X X' = U diag(w) U' gives Q = X' U diag(w^-1/2), an
        eigendecomposition of a users x users matrix instead of a titles x titles one
        (seconds instead of a minute for 180 users and 3,800 titles)."""
        from scipy import linalg

        x = self.likes
        if x is None:
            # LAPACK's divide and conquer (3.5 s against numpy's 5.4 s for 2,500 titles here),
            # in single precision by default: 1.8 s against 4.0 s, with the same recall@50 and
            # NDCG@50 to 4 decimals at every L2 of the grid on the demo data (the smallest L2,
            # 50, is far above the rounding of the eigenvalues). Q stays in that precision.
            w, q = linalg.eigh(self.gram.astype(self.titles_eigen_dtype), driver="evd")
            return w.astype(np.float64), q
        w, u = linalg.eigh((x @ x.T).toarray(), driver="evd")
        nonzero = w > max(float(w.max(initial=0.0)), 1.0) * 1e-9
        return w[nonzero], np.asarray(x.T @ (u[:, nonzero] / np.sqrt(w[nonzero])))

    def weights(self, l2: float) -> np.ndarray:
        """EASE's B at l2, from the cached eigenpairs (ease_inverse), in their precision."""
        p = ease_inverse(self.eigen, l2)
        b = -p / np.diag(p)
        b[np.diag_indices(len(p))] = 0.0
        return b.astype(np.float32)

    def _liked_blocks(self, data: EvalData):
        """(start, stop, x) per block of data.users: x their liked rows in this index, 0/1,
        as a sparse matrix (likes_matrix): a product with it reads only the liked titles' rows
        (7x faster than the dense product for 512 users liking 37 of 2,500 titles each)."""
        rows = positions_in(data.users, self.liked_user)
        for start in range(0, len(data.users), SCORE_BATCH):
            stop = min(start + SCORE_BATCH, len(data.users))
            in_block = (rows >= start) & (rows < stop)
            x = likes_matrix(
                rows[in_block] - start, self.liked_column[in_block], len(self.items), stop - start, np.float32
            )
            yield start, stop, x

    def _top_unseen(self, data: EvalData, start: int, stop: int, item_scores: np.ndarray, k: int) -> np.ndarray:
        scores = np.full((stop - start, data.catalog_size), -1e9, np.float32)
        scores[:, self.items] = item_scores
        return top_k(mask_seen(scores, *data.seen_in(start, stop)), k)

    def rank(self, data: EvalData, weights: np.ndarray, k: int) -> np.ndarray:
        """Top k unseen catalog positions for data.users, scored by their liked rows in this index."""
        ranked = [
            self._top_unseen(data, start, stop, np.asarray(x @ weights), k)
            for start, stop, x in self._liked_blocks(data)
        ]
        return np.concatenate(ranked) if ranked else np.zeros((0, k), np.int64)

    def rank_each(self, data: EvalData, l2s, k: int) -> dict[float, np.ndarray]:
        """rank(data, weights(l2), k) for each of `l2s`.

        With more users to score than titles, through B itself (forming it costs titles^2 x
        rank an L2, then each user's row is a sum of their liked titles' rows). Otherwise
        from the eigenpairs directly, without forming B: with P = I / l2 + Q diag(d) Q'
        (ease_inverse), (x B)_j = -(x P)_j / P_jj + x_j, and x P = x / l2 + (x Q) diag(d) Q',
        users x titles x rank an L2, where each block's x Q serves every L2."""
        if len(data.users) > len(self.items):
            return {float(l2): self.rank(data, self.weights(l2), k) for l2 in l2s}
        w, q = self.eigen[0], self.eigen[1].astype(np.float32)
        # Per L2: d, and P's diagonal.
        terms = {
            float(l2): (
                (1.0 / (w + l2) - 1.0 / l2).astype(np.float32),
                ease_inverse_diagonal(self.eigen, l2).astype(np.float32),
            )
            for l2 in l2s
        }
        ranked: dict[float, list] = {l2: [] for l2 in terms}
        for start, stop, liked in self._liked_blocks(data):
            xq, x = np.asarray(liked @ q), liked.toarray()
            for l2, (shrink, diagonal) in terms.items():
                scores = -(x / np.float32(l2) + (xq * shrink) @ q.T) / diagonal + x
                ranked[l2].append(self._top_unseen(data, start, stop, scores, k))
        return {l2: np.concatenate(r) if r else np.zeros((0, k), np.int64) for l2, r in ranked.items()}


def validation_task(
    user_id: np.ndarray,
    anime_id: np.ndarray,
    position: np.ndarray,
    liked: np.ndarray,
    catalog_size: int,
    percent: int = interactions.VALIDATION_PERCENT,
    min_history: int = interactions.VALIDATION_MIN_HISTORY,
    max_users: int | None = VALIDATION_MAX_USERS,
) -> EvalData:
    """The validation split of training rows (raw ids, catalog positions, liked flags):
    liked rows carved out per user by hash (interactions.is_validation) are the truth,
    the other rows are what a ranker learns from and excludes."""
    held = np.zeros(len(user_id), dtype=bool)
    held[liked] = interactions.validation_rows(user_id[liked], anime_id[liked], percent, min_history)
    fit = liked & ~held
    return EvalData(
        catalog_size,
        user_id[fit],
        position[fit],
        user_id[~held],
        position[~held],
        user_id[held],
        position[held],
        max_users=max_users,
    )


def tune_ease_l2(
    validation: EvalData, grid=EASE_L2_GRID, index: EaseIndex | None = None, metric: str = "recall@50"
) -> tuple[float, dict]:
    """The L2 in `grid` with the best `metric` on a validation task (EASE over its liked
    rows, `index` if given), and every value's score."""
    index = index or EaseIndex.of(validation)
    k = min(max(KS), validation.catalog_size)
    scores = {l2: validation.metrics(ranked)[metric] for l2, ranked in index.rank_each(validation, grid, k).items()}
    best = max(scores, key=lambda l2: (scores[l2], -l2))
    return best, scores


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
