"""The second stage: a ranking model that reorders the candidates of two retrievers.

The candidates are the two-tower's top titles plus the item-item top titles (both
unseen). The ranker scores each (user, candidate) pair with what the two-tower cannot
express: two item-item collaborative scores of the candidate given the user's liked
history (EASE's score, kept as a low-rank factorization so that the SavedModel stays
small: a request chooses item-item's candidates with one product over the leading
components and the most-liked titles, and scores only its candidates with all of
them; and the candidate's highest cosine similarity to a liked title, from a table of
each title's nearest neighbours), the genre affinity of the candidate with the
history, the title's popularity here and on MyAnimeList (members) and its MAL score,
the history's length, and the retrieval score and rank.
The same RankingFeatures module computes the features in the Trainer and in the
serving signatures, so training and serving cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from animerec import evaluation
from animerec import features as f

FEATURE_NAMES = (
    "retrieval_score",
    "log_retrieval_rank",
    "item_item",
    "item_knn_similarity",
    "log_popularity",
    "mal_score",
    "log_mal_members",
    "genre_affinity",
    "log_history_length",
)
# The features that depend on the title alone, consecutive in FEATURE_NAMES.
TITLE_FEATURES = ("log_popularity", "mal_score", "log_mal_members")


def ease_factors(
    eigen: tuple[np.ndarray, np.ndarray], items: np.ndarray, catalog_size: int, l2: float, rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EASE's scores as a rank-`rank` factorization: (item_in, item_out, column), from the
    eigenpairs (w, Q) of the Gram matrix X'X over the titles `items` (EaseIndex.eigen).

    With P = (G + l2 I)^-1 = Q diag(1 / (w + l2)) Q' (G = X'X = Q diag(w) Q'), EASE
    scores an unseen title j as -(x P)_j / P_jj. The identity part of P drops out for
    unseen titles, so keeping the `rank` largest eigenvalues, whose terms
    1 / (w + l2) - 1 / l2 are the only large ones, gives
        score_j = (sum over liked h of item_in[h]) . item_out[:, column[j]]
    exactly when `rank` covers X's rank (the users), closely otherwise.
    item_in: [catalog, rank] (zero rows for titles outside `items`); item_out:
    [rank, len(items) + 1] (the last column, zeros, for those titles); column:
    [catalog] index into item_out's columns.
    """
    w, q = eigen
    p_diagonal = evaluation.ease_inverse_diagonal(eigen, l2)
    top = np.argsort(-w, kind="stable")[: min(rank, len(w))]
    shrink = 1.0 / l2 - 1.0 / (w[top] + l2)
    item_in = np.zeros((catalog_size, rank), np.float32)
    item_in[items, : len(top)] = q[:, top] * shrink
    item_out = np.zeros((rank, len(items) + 1), np.float32)
    item_out[: len(top), : len(items)] = (q[:, top] / p_diagonal[:, None]).T
    column = np.full(catalog_size, len(items), np.int32)
    column[items] = np.arange(len(items))
    return item_in, item_out, column


def cosine_neighbours(
    gram: np.ndarray, items: np.ndarray, catalog_size: int, k: int, block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Each title's k nearest titles by the cosine of their like vectors (co-likes /
    sqrt(likes_i likes_j)), from the Gram matrix X'X over the titles `items`:
    ([catalog, k] catalog positions, -1 where there are fewer with a co-like, and
    [catalog, k] their similarities, 0 there), nearest first. Titles outside `items`
    have none. Rows are computed in blocks, so memory stays at block x len(items)."""
    width = max(1, min(k, len(items) - 1))
    neighbours = np.full((catalog_size, width), -1, np.int32)
    similarity = np.zeros((catalog_size, width), np.float32)
    norms = np.sqrt(np.maximum(np.diag(gram), 1e-12))
    for start in range(0, len(items), block):
        stop = min(start + block, len(items))
        cosine = gram[start:stop] / norms[start:stop, None] / norms[None, :]
        cosine[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        top = np.argpartition(-cosine, width - 1, axis=1)[:, :width] if width < len(items) else np.argsort(-cosine, 1)
        values = np.take_along_axis(cosine, top, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        top, values = np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)
        near = values > 0
        neighbours[items[start:stop]] = np.where(near, items[top], -1)
        similarity[items[start:stop]] = np.where(near, values, 0.0)
    return neighbours, similarity


def genre_matrix(genre_tokens: np.ndarray, genre_vocab_size: int) -> np.ndarray:
    """Unit-norm multi-hot genre rows per catalog position, from the padded genre token ids."""
    matrix = np.zeros((len(genre_tokens), genre_vocab_size + 1), np.float32)
    rows = np.repeat(np.arange(len(genre_tokens)), genre_tokens.shape[1])
    matrix[rows, genre_tokens.reshape(-1)] = 1.0
    matrix[:, f.PAD_TOKEN] = 0.0
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-6)


def top_k(scores: tf.Tensor, k: int, stride: int = 10) -> tuple[tf.Tensor, tf.Tensor]:
    """tf.math.top_k(scores, k) ([batch, catalog] -> values and int32 indices, [batch, k]),
    the same values and indices, ties included. For one row (a lone request) over a
    catalog of 20 k titles or more it sorts only the titles above a threshold, the
    (2k / stride)-th best of every stride-th score (about 2k titles clear it): a third
    less time than a top 100 or 150 of the Kaggle catalog's row. Where fewer than k clear
    it, for a batch, or for a smaller catalog, the whole row is sorted."""

    def whole() -> tuple[tf.Tensor, tf.Tensor]:
        return tuple(tf.math.top_k(scores, k=k))

    width = scores.shape[-1]
    if width is None or width < 20 * k:
        return whole()

    def one_row() -> tuple[tf.Tensor, tf.Tensor]:
        row = scores[0]
        threshold = tf.math.top_k(row[::stride], k=-(-2 * k // stride)).values[-1]
        above = tf.cast(tf.where(row >= threshold)[:, 0], tf.int32)

        def of_above() -> tuple[tf.Tensor, tf.Tensor]:
            # Titles above the threshold keep their catalog order: ties resolve as top_k's do.
            top = tf.math.top_k(tf.gather(row, above), k=k)
            return top.values[None], tf.gather(above, top.indices)[None]

        return tf.cond(tf.size(above) >= k, of_above, whole)

    return tf.cond(tf.shape(scores)[0] == 1, one_row, whole)


def _read_marks(positions: tf.Tensor, marked: tf.Tensor, queries: tf.Tensor, width: int) -> tf.Tensor:
    """1.0 where each of `queries` ([batch, ...] positions below `width`) is among its row's
    `positions` ([batch, n]) where `marked`, 0.0 elsewhere. The marks go on a flat
    [batch x width] map: n writes and one read a query, not n comparisons; flat, because
    a gather with batch_dims costs several times a plain one."""
    batch = tf.shape(positions)[0]
    offsets = tf.range(batch)[:, None] * width
    flat = tf.scatter_nd(
        tf.reshape(positions + offsets, [-1, 1]), tf.reshape(tf.cast(marked, tf.float32), [-1]), [batch * width]
    )
    flat = tf.minimum(flat, 1.0)  # a position given twice is marked once
    # gather_nd, not gather: gather copies each element with a memcpy of run-time size
    # (TensorFlow's gather_functor.h, HandleCopies); for 7,500 reads a request gather_nd
    # took about a quarter less time.
    return tf.reshape(tf.gather_nd(flat, (tf.reshape(queries, [batch, -1]) + offsets)[..., None]), tf.shape(queries))


class RankingFeatures(tf.Module):
    """Per (user, candidate) features, from the user's liked history and the candidates."""

    def __init__(
        self,
        item_in: np.ndarray,
        item_out: np.ndarray,
        item_column: np.ndarray,
        neighbours: np.ndarray,
        neighbour_similarity: np.ndarray,
        likes_by_position: np.ndarray,
        genres: np.ndarray,
        mal_score: np.ndarray,
        members: np.ndarray,
        candidate_rank: int | None = None,
        candidate_titles: int | None = None,
    ):
        """candidate_rank: the rank of the EASE scores that choose item-item's candidates
        (the leading components of ease_factors'; None: all). candidate_titles: item-item's
        candidates come from this many of EASE's titles, the most liked (None: all). The
        candidates' own scores, a feature, always use every component, and any EASE title."""
        super().__init__()
        self.catalog_size = len(likes_by_position)
        self.item_in = tf.Variable(item_in, trainable=False, name="ease_item_in")
        # By catalog position, zeros for titles outside EASE: a request gathers its
        # candidates' rows, never the whole matrix, and with no column lookup first.
        self.item_out_rows = tf.Variable(
            np.ascontiguousarray(item_out.T[item_column]), trainable=False, name="ease_item_out"
        )
        # The leading components alone, by columns: one product scores every EASE title.
        self.candidate_rank = item_out.shape[0] if candidate_rank is None else min(candidate_rank, item_out.shape[0])
        # Catalog position of each EASE column, and the columns item-item's candidates come
        # from (in column order): the request's largest product reads only theirs.
        ease_items = np.argsort(item_column, kind="stable")[: item_out.shape[1] - 1].astype(np.int32)
        columns = np.arange(len(ease_items))
        if candidate_titles is not None and candidate_titles < 1:
            raise ValueError(f"item_item_candidate_titles must be at least 1 (or None: all); got {candidate_titles}")
        if candidate_titles is not None and candidate_titles < len(ease_items):
            likes = np.asarray(likes_by_position, np.float64)[ease_items]
            columns = np.sort(np.argsort(-likes, kind="stable")[:candidate_titles])
        self.candidate_out = tf.Variable(
            np.ascontiguousarray(item_out[: self.candidate_rank, columns]), trainable=False, name="ease_candidate_out"
        )
        # Catalog position of each candidate_out column.
        self.ease_items = tf.Variable(ease_items[columns], trainable=False, name="ease_items")
        # Everything else the features read of a title, one row per title (a request makes
        # one gather of its candidates' rows, not one per table): its unit-norm genre row,
        # TITLE_FEATURES (in FEATURE_NAMES' order), then cosine_neighbours' k similarities
        # and k positions. The positions are stored as floats (exact below 2^24) and padding
        # points one past the catalog, a position no history marks: no test for -1 a request.
        if self.catalog_size + 1 >= 2**24:
            raise ValueError(f"catalogs of 2^24 titles or more do not fit the title table; got {self.catalog_size}")
        title_features = np.stack(
            [
                np.log1p(likes_by_position),
                np.asarray(mal_score, np.float64),
                np.log1p(np.asarray(members, np.float64)),
            ],
            axis=1,
        )
        neighbour_positions = np.where(neighbours >= 0, neighbours, self.catalog_size)
        self.genre_width, self.neighbour_count = genres.shape[1], neighbours.shape[1]
        table = np.concatenate([genres, title_features, neighbour_similarity, neighbour_positions], axis=1)
        self.title_table = tf.Variable(table.astype(np.float32), trainable=False, name="title_table")

    def _title_columns(self, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """title_table `rows` ([..., width]) as (genre rows, TITLE_FEATURES, neighbour
        similarities, neighbour positions)."""
        genres, titles = self.genre_width, len(TITLE_FEATURES)
        similarity = genres + titles
        positions = similarity + self.neighbour_count
        return (
            rows[..., :genres],
            rows[..., genres:similarity],
            rows[..., similarity:positions],
            tf.cast(rows[..., positions:], tf.int32),
        )

    @property
    def title_features(self) -> tf.Tensor:
        """[catalog, len(TITLE_FEATURES)]: the features of the title alone."""
        return self._title_columns(self.title_table)[1]

    def item_item_user(self, history: tf.Tensor) -> tf.Tensor:
        """[batch, rank]: the user's side of EASE's factorization (ease_factors), from the
        liked titles ([batch, H] catalog positions, -1 padded)."""
        valid = tf.cast(history >= 0, tf.float32)[..., None]
        return tf.reduce_sum(tf.gather(self.item_in, tf.maximum(history, 0)) * valid, axis=1)

    def item_item_of(self, user: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """[batch, N]: EASE's scores of the candidates ([batch, N] catalog positions) for
        item_item_user's `user`; 0 for titles outside EASE."""
        return tf.reduce_sum(tf.gather(self.item_out_rows, candidates) * user[:, None, :], axis=-1)

    def item_item_scores(self, history: tf.Tensor) -> tf.Tensor:
        """[batch, catalog]: EASE's scores from the user's liked titles."""
        return tf.matmul(self.item_item_user(history), self.item_out_rows, transpose_b=True)

    def user_side(self, history: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """What the features need of the user's liked history ([batch, H] catalog positions,
        -1 padded) besides the titles themselves: item_item_user's vector, the history's
        unit-norm genre profile and log(1 + its length). Its cost grows with the history,
        so the serving model stores it per known user (user_side_table)."""
        valid = history >= 0
        genres = self._title_columns(tf.gather(self.title_table, tf.maximum(history, 0)))[0]
        profile = tf.reduce_sum(genres * tf.cast(valid, tf.float32)[..., None], axis=1)
        count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=1)
        return self.item_item_user(history), tf.math.l2_normalize(profile, axis=1), tf.math.log1p(count)

    def user_side_table(self, splits: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """user_side for every row of a CSR table of liked catalog positions, as arrays
        ([rows, rank], [rows, genres], [rows]), at the cost of one sparse product."""
        import scipy.sparse

        rows, values = len(splits) - 1, np.asarray(values, np.int64)
        if len(values) and (values.min() < 0 or values.max() >= self.catalog_size):
            raise ValueError(
                f"liked catalog positions must lie in [0, {self.catalog_size}); got {values.min()} to {values.max()}"
            )
        liked = scipy.sparse.csr_matrix(
            (np.ones(len(values), np.float32), values, np.asarray(splits, np.int64)),
            shape=(rows, self.catalog_size),
        )
        item_item = np.asarray(liked @ self.item_in.numpy(), np.float32)
        profile = np.asarray(liked @ self._title_columns(self.title_table)[0].numpy(), np.float32)
        # tf.math.l2_normalize's: x / sqrt(max(sum(x^2), 1e-12)).
        profile /= np.sqrt(np.maximum((profile**2).sum(axis=1, keepdims=True), 1e-12))
        return item_item, profile, np.log1p(np.diff(splits)).astype(np.float32)

    def __call__(
        self,
        history: tf.Tensor,
        retrieval_scores: tf.Tensor,
        retrieved: int,
        item_item_candidates: int,
        user_side: tuple | None = None,
        item_item: tuple | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The candidates, their features and which are present.

        history: [batch, H] liked catalog positions, -1 padded. retrieval_scores:
        [batch, catalog], -inf where a title is excluded (seen). The candidates are
        the union of retrieval's top `retrieved` and the item-item top
        `item_item_candidates`, ordered by retrieval score: [batch, retrieved +
        item_item_candidates] catalog positions, with `present` false on padding
        when the union is smaller (its features are finite, and meaningless). Only
        the candidates' lists are sorted, never the catalog again. `user_side` and
        `item_item`: as of_retrieved's.
        """
        values, indices = top_k(retrieval_scores, retrieved)
        return self.of_retrieved(
            history,
            indices,
            values,
            retrieval_scores,
            lambda positions: tf.gather(retrieval_scores, positions, batch_dims=1),
            item_item_candidates,
            user_side=user_side,
            item_item=item_item,
        )

    def of_retrieved(
        self,
        history: tf.Tensor,
        retrieved: tf.Tensor,
        retrieved_scores: tf.Tensor,
        exclusion: tf.Tensor,
        retrieval_score_of,
        item_item_candidates: int,
        exact: bool | tf.Tensor = True,
        user_side: tuple | None = None,
        item_item: tuple | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """As __call__, from retrieval's top titles found elsewhere (a ScaNN index):
        `retrieved` [batch, N] catalog positions with their `retrieved_scores`, best first
        (-inf on padding); `exclusion` [batch, catalog], -inf where a title is excluded
        and finite elsewhere; `retrieval_score_of` maps [batch, M] catalog positions to
        their retrieval scores (-inf where excluded), computed as `retrieved_scores` are.
        `exact`: `retrieved` is the exact top N, so a title scoring above its last one was
        retrieved; otherwise (an approximate index) an item-item title counts as retrieved
        only if it is among `retrieved`, and one the index missed is kept. `user_side`:
        user_side(history), when it was computed ahead (None: computed here). `item_item`:
        (item_item_candidates' titles, their item_item_of scores, clash), when they were
        computed ahead for the exclusions known then (None: chosen here); clash None, or a
        boolean scalar: true when a request excludes more, and they are chosen here again."""
        user_side = self.user_side(history) if user_side is None else user_side
        user = user_side[0]

        def chosen_here() -> tuple[tf.Tensor, tf.Tensor]:
            positions = self.item_item_candidates(user, exclusion, item_item_candidates)
            return positions, self.item_item_of(user, positions)

        if item_item is None:
            by_item_item, by_item_item_ease = chosen_here()
        elif item_item[2] is None:
            by_item_item, by_item_item_ease = item_item[:2]
        else:  # chosen here where the stored ones clash with the request's exclusions
            by_item_item, by_item_item_ease = tf.cond(item_item[2], chosen_here, lambda: tuple(item_item[:2]))
        # A title both retrievers propose counts once: retrieval proposed every title scoring
        # above its last one's score (and, of those tied with it, some: the rest are dropped
        # too). A seen one (fewer unseen than asked) counts not at all.
        item_item_scores = retrieval_score_of(by_item_item)
        twice = item_item_scores >= retrieved_scores[:, -1:]
        if exact is not True:  # False, or a boolean tensor (a request's)
            found = tf.math.is_finite(retrieved_scores)
            twice = tf.where(exact, twice, _read_marks(retrieved, found, by_item_item, self.catalog_size) > 0)
        union = tf.concat([retrieved, by_item_item], axis=1)
        union_scores = tf.concat([retrieved_scores, tf.where(twice, float("-inf"), item_item_scores)], axis=1)
        union_ease = tf.concat([self.item_item_of(user, retrieved), by_item_item_ease], axis=1)
        top = tf.math.top_k(union_scores, k=tf.shape(union)[1])
        candidates, present = tf.gather(union, top.indices, batch_dims=1), tf.math.is_finite(top.values)
        ease = tf.gather(union_ease, top.indices, batch_dims=1)
        return candidates, self.features(history, candidates, top.values, ease, present, user_side), present

    def item_item_candidates(self, user: tf.Tensor, exclusion: tf.Tensor, n: int) -> tf.Tensor:
        """[batch, n] catalog positions: item-item's top n titles for item_item_user's `user`
        that `exclusion` ([batch, catalog], -inf where excluded) leaves, chosen among EASE's
        candidate columns by its leading components (seen ones last when fewer remain)."""
        unseen = tf.math.is_finite(tf.gather(exclusion, self.ease_items, axis=1))
        return tf.gather(
            self.ease_items,
            tf.math.top_k(
                tf.where(unseen, tf.matmul(user[:, : self.candidate_rank], self.candidate_out), float("-inf")),
                k=min(n, self.ease_items.shape[0]),
            ).indices,
        )

    def features(
        self,
        history: tf.Tensor,
        candidates: tf.Tensor,
        retrieval_scores: tf.Tensor,
        item_item: tf.Tensor,
        present: tf.Tensor,
        user_side: tuple,
    ) -> tf.Tensor:
        """[batch, N, len(FEATURE_NAMES)] features of the candidates ([batch, N] positions
        with their retrieval scores and EASE's scores, item_item_of's), with the history's
        user_side."""
        valid = history >= 0
        liked = tf.maximum(history, 0)
        _, profile, log_count = user_side
        genres, title_features, similarity, neighbours = self._title_columns(tf.gather(self.title_table, candidates))
        affinity = tf.reduce_sum(genres * profile[:, None, :], axis=2)

        shape = tf.shape(candidates)
        # A fixed number of candidates (every signature's but the ScaNN path's) makes the
        # ranks a constant the graph optimizer folds.
        width = candidates.shape[1] if candidates.shape[1] is not None else shape[1]
        log_rank = tf.math.log1p(tf.cast(tf.range(width), tf.float32))
        # The highest similarity among the candidate's neighbours the user liked: exact
        # whenever one of its k nearest titles is in the history (the nearest liked one
        # is then among them), 0 otherwise. Liked titles are marked on a [batch, catalog] map.
        liked_neighbour = _read_marks(liked, valid, neighbours, self.catalog_size + 1)
        knn = tf.reduce_max(liked_neighbour * similarity, axis=-1)
        before_titles = [
            tf.where(present, retrieval_scores, 0.0),  # -inf on padding
            tf.broadcast_to(log_rank[None, :], shape),
            item_item,
            knn,
        ]
        after_titles = [affinity, tf.broadcast_to(log_count[:, None], shape)]
        # Padding's features are those of whatever title fills the slot, all finite: the
        # ranker's scores there are discarded (and masked out of its loss), so no broadcast
        # select over [batch, N, features] zeroes them.
        return tf.concat(
            [
                tf.stack(before_titles, axis=-1),
                title_features,
                tf.stack(after_titles, axis=-1),
            ],
            axis=-1,
        )


class Ranker(tfrs.Model):
    """Scores [batch, N, features] -> [batch, N]: the mean of `members` small MLPs, each
    trained listwise (a softmax over the user's candidates against their held-out
    titles, tfrs Ranking task) from its own initialization. The validation lists are
    few (a few hundred users on a small dataset): averaging members cuts the variance
    one MLP shows from one seed to the next."""

    def __init__(
        self, mean: list[float], variance: list[float], hidden_units: tuple[int, ...] = (32,), members: int = 5
    ):
        super().__init__()
        # The features' moments, fixed: Normalization.adapt takes seconds a fit here.
        self.normalization = tf.keras.layers.Normalization(axis=-1, mean=mean, variance=variance)
        self.scorers = [
            tf.keras.Sequential(
                [tf.keras.layers.Dense(units, activation="relu") for units in hidden_units] + [tf.keras.layers.Dense(1)]
            )
            for _ in range(members)
        ]
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))

    def member_scores(self, features: tf.Tensor) -> tf.Tensor:
        normalized = self.normalization(features)
        return tf.stack([tf.squeeze(scorer(normalized), axis=-1) for scorer in self.scorers])

    def call(self, features: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(self.member_scores(features), axis=0)

    @tf.autograph.experimental.do_not_convert
    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features, labels, present = inputs
        targets = labels / tf.maximum(tf.reduce_sum(labels, axis=1, keepdims=True), 1.0)
        # Members share no weights, so the sum of their losses trains each one on its own.
        return tf.add_n(
            [
                self.task(labels=targets, predictions=tf.where(present, scores, -1e9))
                for scores in tf.unstack(self.member_scores(features))
            ]
        )


class ServingRanker(tf.Module):
    """A fitted Ranker as one MLP, for serving: the normalization folded into the first
    layer, the members side by side (the first layer's units concatenated, deeper layers
    block-diagonal, the output weights divided by their number, so the output is the
    members' mean). Computes what Ranker computes, up to float rounding, in a few ops a
    request instead of a few dozen."""

    def __init__(self, ranker: Ranker):
        super().__init__()
        for scorer in ranker.scorers:  # what the fold assumes: ReLU hidden layers, a linear output
            activations = [layer.activation for layer in scorer.layers]
            if activations[-1] is not tf.keras.activations.linear or any(
                a is not tf.keras.activations.relu for a in activations[:-1]
            ):
                raise ValueError(f"ServingRanker folds ReLU MLPs with a linear output; got activations {activations}")
        members = [[(layer.kernel.numpy(), layer.bias.numpy()) for layer in s.layers] for s in ranker.scorers]
        mean = np.asarray(ranker.normalization.mean, np.float64).reshape(-1)
        scale = 1.0 / np.maximum(np.sqrt(np.asarray(ranker.normalization.variance, np.float64).reshape(-1)), 1e-7)
        layers = []
        for depth in range(len(members[0])):
            kernels = [m[depth][0].astype(np.float64) for m in members]
            biases = [m[depth][1].astype(np.float64) for m in members]
            if depth == len(members[0]) - 1:  # the output layer: the members' mean
                # After hidden layers each member reads its own units; a linear ranker's members
                # all read the features.
                kernel = np.concatenate(kernels, axis=0) / len(members) if depth else np.mean(kernels, axis=0)
                bias = np.mean(biases, axis=0)
            elif depth == 0:  # every member reads the same features
                kernel, bias = np.concatenate(kernels, axis=1), np.concatenate(biases)
            else:  # each member reads its own units
                kernel = np.zeros((sum(k.shape[0] for k in kernels), sum(k.shape[1] for k in kernels)))
                row = col = 0
                for k in kernels:
                    kernel[row : row + k.shape[0], col : col + k.shape[1]] = k
                    row, col = row + k.shape[0], col + k.shape[1]
                bias = np.concatenate(biases)
            if depth == 0:  # (x - mean) * scale @ W + b = x @ (scale W) + (b - (mean scale) @ W)
                bias = bias - (mean * scale) @ kernel
                kernel = kernel * scale[:, None]
            layers.append((kernel, bias))
        self.kernels = [
            tf.Variable(k.astype(np.float32), trainable=False, name=f"kernel_{i}") for i, (k, _) in enumerate(layers)
        ]
        self.biases = [
            tf.Variable(b.astype(np.float32), trainable=False, name=f"bias_{i}") for i, (_, b) in enumerate(layers)
        ]

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        """[batch, N, features] -> [batch, N] scores."""
        # As one [batch x N, features] matrix: 2-D products are cheaper than batched ones.
        units = tf.reshape(features, [-1, features.shape[-1]])
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            units = tf.matmul(units, kernel) + bias
            if i < len(self.kernels) - 1:
                units = tf.nn.relu(units)
        return tf.reshape(units, tf.shape(features)[:-1])


def fit_ranker(
    features: np.ndarray,
    labels: np.ndarray,
    present: np.ndarray,
    hidden_units: tuple[int, ...],
    epochs: int,
    max_steps: int,
    members: int = 5,
    learning_rate: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
) -> Ranker:
    """A Ranker fitted on users' candidate lists for `epochs`, at most `max_steps` batches of
    `batch_size` lists (lists without a positive teach nothing)."""
    keep = labels.sum(axis=1) > 0
    features, labels, present = features[keep], labels[keep].astype(np.float32), present[keep]
    tf.keras.utils.set_random_seed(seed)
    values = features[present]
    # As lists: Keras records a model's constructor arguments and warns about arrays.
    mean, variance = values.mean(axis=0).tolist(), np.maximum(values.var(axis=0), 1e-6).tolist()
    ranker = Ranker(mean, variance, hidden_units, members)
    ranker.compile(optimizer=tf.keras.optimizers.Adam(learning_rate))
    dataset = (
        tf.data.Dataset.from_tensor_slices((features, labels, present))
        .shuffle(len(features), seed=seed)
        .repeat()
        .batch(batch_size)
    )
    steps = min(max_steps, max(1, epochs * -(-len(features) // batch_size)))
    ranker.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return ranker


def rerank(ranker: Ranker, features: np.ndarray, present: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The order (indices into each user's candidates) the ranker puts them in, best first."""
    scores = np.concatenate(
        [ranker(tf.constant(features[i : i + batch_size])).numpy() for i in range(0, len(features), batch_size)]
    )
    scores = np.where(present, scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")
