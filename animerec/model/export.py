"""The serving SavedModel: two stages over the whole catalog, seen titles excluded.

Stock TensorFlow ops only, so stock TF Serving loads it. The query tower runs at
export time: each known user's embedding (from their liked history) is stored,
so retrieval is a lookup, one product with the catalog matrix, the exclusions
and a top-N. The ranker (animerec.model.ranking) then reorders those N
candidates (max(N, k) when k is larger) from the user's liked history and the
candidates' item-item, genre and popularity features, and the top k are
returned; `scores` are the ranker's logits. Signatures (names in animerec.features):
  serving_default(user_id[B] int64) -> anime_ids[B,K], scores[B,K], titles[B,K], genres[B,K], is_fallback[B]
    (K: the export's top_k)
  recommend(user_id[B], k[B] int32, exclude_anime_ids[B,M] int64, -1 padded) -> the same with
    max_k columns; row b holds its top k[b] (capped to 0..max_k), the rest is padding
  recommend_from_liked(liked_anime_ids[B,L] int64, -1 padded, k[B], exclude_anime_ids[B,M]) -> as
    recommend, for users the model may not know: the query tower runs on their liked titles
  serving_tf_example(examples[B] string: serialized tf.Example with user_id) -> the same as serving_default
    (an Example without exactly one user_id gets the popular fallback, as an unknown user does)
  recommend_for_eval: as recommend, but titles held out for evaluation are not excluded (the Evaluator's view)
  retrieve_for_eval: as recommend_for_eval, retrieval alone (the first stage, for the Evaluator's ablation)
A two-stage model also saves `rank_retrieved` (recommend's inputs, each user's retrieved
catalog positions, the output width and whether the index was exact): the second stage
on the titles an index found
(animerec.serving.scann_index), as a function, not a signature, so TF Serving does not see it.
Every input has a leading batch dimension and every output's width is fixed, so
TF Serving's batching session (--enable_batching) can merge any requests of a
signature: it concatenates inputs along dim 0, pads variable-length ones with the
first element of each request's tensor, and splits the outputs along dim 0. Clients
start exclude_anime_ids with a -1 column, so that padding is -1 too (serving.client does).
A user id the model has not seen, or one without a liked title, gets the most
popular unseen titles with is_fallback=True instead of an error. Slots beyond
k or beyond the titles left unseen are padded with anime id -1, score -inf and "".
"""

from __future__ import annotations

import logging as std_logging
import os

import numpy as np
import tensorflow as tf

from animerec import evaluation
from animerec import features as f
from animerec.model import ranking
from animerec.model.data import TrainingData
from animerec.model.retrieval import RetrievalModel, query_embeddings
from animerec.model.two_stage import SecondStage, liked_positions

# user_id, k and per-request exclusions: the inputs of `recommend` and `recommend_for_eval`.
RECOMMEND_INPUTS = [
    tf.TensorSpec([None], tf.int64, name=f.SERVING_USER_ID),
    tf.TensorSpec([None], tf.int32, name=f.SERVING_K),
    tf.TensorSpec([None, None], tf.int64, name=f.SERVING_EXCLUDE),
]

# A new user's liked titles, k and exclusions: the inputs of `recommend_from_liked`.
FROM_LIKED_INPUTS = [
    tf.TensorSpec([None, None], tf.int64, name=f.SERVING_LIKED),
    tf.TensorSpec([None], tf.int32, name=f.SERVING_K),
    tf.TensorSpec([None, None], tf.int64, name=f.SERVING_EXCLUDE),
]


# recommend's inputs, each user's retrieved catalog positions (-1 padded), the output
# width and whether the index was exact: the inputs of the second stage run on an index's
# retrieved titles (rank_retrieved).
RANK_RETRIEVED_INPUTS = RECOMMEND_INPUTS + [
    tf.TensorSpec([None, None], tf.int32, name="retrieved"),
    tf.TensorSpec([], tf.int32, name="width"),
    tf.TensorSpec([], tf.bool, name="exact"),
]


def _padded_rows(values: tf.Variable, splits: tf.Variable, row: tf.Tensor) -> tf.Tensor:
    """Rows `row` of a CSR table as a dense [batch, longest row] matrix padded with -1.

    Dense index arithmetic (a dozen ops) instead of ragged tensors (hundreds of
    small ops per call), touching only the rows asked for.
    """
    starts = tf.gather(splits, row)
    lengths = tf.gather(splits, row + 1) - starts
    positions = starts[:, None] + tf.range(tf.reduce_max(lengths), dtype=starts.dtype)[None, :]
    valid = positions < (starts + lengths)[:, None]
    gathered = tf.gather(values, tf.where(valid, positions, 0))
    return tf.where(valid, tf.cast(gathered, tf.int32), -1)


def _same_rows(reference: tf.Tensor, reference_name: str, **tensors) -> list:
    """Assertions that each tensor given has one row per row of `reference`."""
    return [
        tf.debugging.assert_equal(
            tf.shape(tensor)[0], tf.shape(reference)[0], message=f"{name} must have one row per {reference_name}"
        )
        for name, tensor in tensors.items()
        if tensor is not None
    ]


def _mask_columns(scores: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """Sets scores[b, columns[b, j]] to -inf for every column >= 0 (-1 is padding)."""
    batch, width = tf.shape(columns)[0], tf.shape(columns)[1]
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, width])
    indices = tf.stack([rows, tf.maximum(columns, 0)], axis=-1)
    # min(score, +inf) leaves the padding slots alone, so no boolean mask is needed.
    updates = tf.where(columns >= 0, float("-inf"), float("inf"))
    return tf.tensor_scatter_nd_min(scores, indices, updates)


def _signature(input_signature: list):
    """A serving signature, traced without AutoGraph: its code (the query tower's Keras
    layers included) has no Python control flow on tensors to convert, and converting
    it took two thirds of an export's time (22 s of a Trainer's first export, 6 s without)."""
    return tf.function(input_signature=input_signature, autograph=False)


def _csr_int32(splits: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Catalog positions fit in int32: half the SavedModel's size for the seen-titles tables."""
    return np.asarray(splits, np.int64), np.asarray(values, np.int32)


class RecommenderModule(tf.Module):
    """Everything per user is computed at export time: the query tower's output
    (the user's embedding, from their liked history) and whether the user has
    one. A request is a table lookup, one [batch, dim] x [dim, catalog] product,
    the exclusions and a top-k.
    """

    def __init__(
        self,
        model: RetrievalModel,
        data: TrainingData,
        catalog_embeddings: np.ndarray,
        top_k: int,
        catalog_bias: np.ndarray | None = None,
        second_stage: SecondStage | None = None,
    ):
        super().__init__()
        catalog = data.catalog
        self.second_stage = second_stage
        if second_stage is not None:
            self.ranking_features = second_stage.features
            self.ranker = ranking.ServingRanker(second_stage.ranker)
            self.candidates = min(second_stage.candidates, len(catalog.anime_id))
            self.item_item_candidates = min(second_stage.item_item_candidates, len(catalog.anime_id))
            liked_splits, liked_values = _csr_int32(*liked_positions(data))
            self.liked_splits = tf.Variable(liked_splits, trainable=False, name="liked_splits")
            self.liked_values = tf.Variable(liked_values, trainable=False, name="liked_values")
            # What the second stage needs of each known user's history besides the titles
            # (RankingFeatures.user_side), stored: computed per request, it grows with the
            # history (a gather of a rank-256 row per liked title), which made heavy users'
            # requests the slow ones.
            user_side = self.ranking_features.user_side_table(liked_splits, liked_values)
            self.user_item_item = tf.Variable(user_side[0], trainable=False, name="user_item_item")
            self.user_genre_profile = tf.Variable(user_side[1], trainable=False, name="user_genre_profile")
            self.user_log_likes = tf.Variable(user_side[2], trainable=False, name="user_log_likes")
            # For a ScaNN index serving both stages (animerec.serving.scann_index): N, and
            # the second stage from an index's retrieved titles, a saved function that is
            # not a signature (TF Serving does not see it).
            self.ranking_candidates = tf.Variable(self.candidates, trainable=False, name="ranking_candidates")
            # By rows: rank_retrieved gathers its candidates' embeddings, never the whole matrix.
            self.catalog_embeddings = tf.Variable(
                np.asarray(catalog_embeddings, np.float32), trainable=False, name="catalog_embeddings"
            )
            self.rank_retrieved = tf.function(
                self._rank_retrieved, input_signature=RANK_RETRIEVED_INPUTS, autograph=False
            )
        self.top_k = min(top_k, len(catalog.anime_id))
        # The fixed width of `recommend`'s outputs: the largest k a request may ask for
        # (at least what the Evaluator asks for).
        self.max_k = min(max(top_k, max(evaluation.KS)), len(catalog.anime_id))
        self.catalog_size = len(catalog.anime_id)
        # Stored [dim, catalog]: a plain product reads it in order, no transpose per request.
        self.catalog_embeddings_t = tf.Variable(
            np.ascontiguousarray(np.asarray(catalog_embeddings, np.float32).T),
            trainable=False,
            name="catalog_embeddings_t",
        )
        bias = catalog_bias if catalog_bias is not None else np.zeros(len(catalog.anime_id), np.float32)
        self.catalog_bias = tf.Variable(bias, trainable=False, name="catalog_bias")
        self.catalog_anime_ids = tf.Variable(catalog.anime_id, trainable=False, name="catalog_anime_ids")
        # For new users: the query tower and each catalog title's anime index (its input).
        self.anime_vocab_size = data.anime_vocab_size
        self.catalog_anime_index = tf.Variable(
            np.asarray(catalog.anime_index, np.int64), trainable=False, name="catalog_anime_index"
        )
        self.catalog_titles = tf.Variable(catalog.titles, trainable=False, name="catalog_titles")
        self.catalog_genres = tf.Variable(catalog.genres, trainable=False, name="catalog_genres")
        popularity = data.likes_by_catalog_position().astype(np.float32)
        self.popularity = tf.Variable(popularity / max(popularity.sum(), 1.0), trainable=False, name="popularity")
        n_rows = len(data.seen_splits) - 1  # user indices + the empty row for unknown users
        self.empty_user_row = data.user_vocab_size
        rows = np.arange(n_rows)
        self.user_embeddings = tf.Variable(query_embeddings(model, data, rows), trainable=False, name="user_embeddings")
        # For new users, the query tower (built by the line above): its variables are saved;
        # the Keras model object is not (Keras would try to serialize its constructor
        # arguments and warn), its call is traced into the signature.
        self.query_tower_variables = list(model.query_tower.variables)
        self._query_tower = model.query_tower.__call__
        has_history = (np.diff(data.history_splits) > 0) & (rows < data.user_vocab_size)
        self.has_history = tf.Variable(has_history, trainable=False, name="has_history")
        seen_splits, seen_values = _csr_int32(data.seen_splits, data.seen_values)
        self.seen_splits = tf.Variable(seen_splits, trainable=False, name="seen_splits")
        self.seen_values = tf.Variable(seen_values, trainable=False, name="seen_values")
        heldout_splits = data.heldout_splits if data.heldout_splits is not None else np.zeros(n_rows + 1, np.int64)
        heldout_values = data.heldout_values if data.heldout_values is not None else np.zeros(0, np.int32)
        heldout_splits, heldout_values = _csr_int32(heldout_splits, heldout_values)
        self.heldout_splits = tf.Variable(heldout_splits, trainable=False, name="heldout_splits")
        self.heldout_values = tf.Variable(heldout_values, trainable=False, name="heldout_values")
        known_users = np.flatnonzero(data.user_ids >= 0)
        # The users the model knows, for batch jobs that recommend to everyone.
        self.known_user_ids = tf.Variable(data.user_ids[known_users], trainable=False, name="known_user_ids")
        # ... and their rows in user_embeddings, seen_* and heldout_*, for a ScaNN index
        # built from the checkpoint (animerec.serving.scann_index).
        self.known_user_rows = tf.Variable(known_users.astype(np.int64), trainable=False, name="known_user_rows")
        self.user_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(data.user_ids[known_users], tf.int64), tf.constant(known_users, tf.int64)
            ),
            default_value=-1,
        )
        self.anime_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(catalog.anime_id, tf.int64), tf.range(self.catalog_size, dtype=tf.int32)
            ),
            default_value=-1,
        )
        if second_stage is not None:
            # Each known user's item-item candidates (RankingFeatures.item_item_candidates,
            # their seen and held-out titles excluded) and those candidates' EASE scores,
            # stored: a request then neither chooses them (a [batch, 64] x [64, 1000] product
            # and a top 100) nor scores them (a rank-256 row each). One whose exclusions
            # clash with them chooses them again.
            positions, ease = self._item_item_table(n_rows)
            # In int16 when the catalog allows (the Kaggle catalog's 17,562 titles do): 2
            # bytes a candidate instead of 4, 65 MB less for 325,000 users.
            small = self.catalog_size <= np.iinfo(np.int16).max + 1
            positions = positions.astype(np.int16 if small else np.int32)
            self.user_item_item_candidates = tf.Variable(positions, trainable=False, name="user_item_item_candidates")
            self.user_item_item_ease = tf.Variable(ease, trainable=False, name="user_item_item_ease")

    def _item_item_table(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """RankingFeatures.item_item_candidates and their item_item_of scores for user rows
        [0, rows), with each row's seen and held-out titles excluded, in blocks of rows
        whose [block, catalog] exclusion map stays within 64 MB."""
        block = max(1, min(1024, (16 << 20) // self.catalog_size))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)], autograph=False)
        def choose(row: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            excluded = tf.concat(self._stored_exclusions(row, exclude_heldout=True), axis=1)
            exclusion = _mask_columns(tf.zeros([tf.shape(row)[0], self.catalog_size]), excluded)
            user = tf.gather(self.user_item_item, row)
            positions = self.ranking_features.item_item_candidates(user, exclusion, self.item_item_candidates)
            return positions, self.ranking_features.item_item_of(user, positions)

        parts = [choose(tf.range(start, min(start + block, rows), dtype=tf.int64)) for start in range(0, rows, block)]
        return np.concatenate([p[0].numpy() for p in parts]), np.concatenate([p[1].numpy() for p in parts])

    def _stored_exclusions(self, row: tf.Tensor, exclude_heldout: bool) -> list:
        """The titles the model itself excludes for user rows `row` (catalog positions, -1
        padded): their seen titles, and the held-out ones unless for evaluation. The stored
        item-item candidates are chosen with both excluded, as a served request has them."""
        excluded = [_padded_rows(self.seen_values, self.seen_splits, row)]
        if exclude_heldout:
            excluded.append(_padded_rows(self.heldout_values, self.heldout_splits, row))
        return excluded

    def _stored_item_item(self, row: tf.Tensor, asked: tf.Tensor | None) -> tuple:
        """RankingFeatures' `item_item` of known users' rows, as stored at export; `asked`:
        the request's excluded catalog positions (-1 padded), which clash when any of them
        is among a row's stored candidates (then the whole batch chooses them again: the
        same titles, but for a near-tie within float rounding, since a product over a
        batch of another size may sum in another order)."""
        positions = tf.cast(tf.gather(self.user_item_item_candidates, row), tf.int32)
        clash = None
        if asked is not None and positions.shape[1]:  # none stored (no EASE title): nothing to clash with
            # Each asked title looked up in its row's sorted candidates: [batch, M] work and
            # memory, however long the exclusion list.
            stored = tf.sort(positions, axis=1)
            found = tf.searchsorted(stored, asked)
            found = tf.gather(stored, tf.minimum(found, tf.shape(stored)[1] - 1), batch_dims=1)
            clash = tf.reduce_any((found == asked) & (asked >= 0))
        return positions, tf.gather(self.user_item_item_ease, row), clash

    def _recommend(
        self,
        user_id: tf.Tensor,
        k: tf.Tensor,
        width: int,
        exclude_anime_ids: tf.Tensor | None,
        exclude_heldout: bool = True,
        two_stage: bool = True,
    ) -> dict:
        """Row b: the top k[b] unseen titles of user_id[b], in `width` columns."""
        k, row, excluded = self._known_users(user_id, k, width, exclude_anime_ids, exclude_heldout)
        history = user_side = item_item = None
        if two_stage and self.second_stage is not None:
            history = _padded_rows(self.liked_values, self.liked_splits, row)
            user_side = self._user_side(row)
            if exclude_heldout:  # the exclusions the stored candidates were chosen with
                item_item = self._stored_item_item(row, None if exclude_anime_ids is None else excluded[-1])
        return self._top(
            tf.gather(self.user_embeddings, row),
            tf.gather(self.has_history, row),
            excluded,
            history,
            k,
            width,
            user_side,
            item_item,
        )

    def _user_side(self, row: tf.Tensor) -> tuple:
        """RankingFeatures.user_side of known users' rows, as stored at export."""
        return (
            tf.gather(self.user_item_item, row),
            tf.gather(self.user_genre_profile, row),
            tf.gather(self.user_log_likes, row),
        )

    def _known_users(self, user_id: tf.Tensor, k: tf.Tensor, width, exclude_anime_ids, exclude_heldout: bool):
        """k capped to 0..width, each user's row (the empty row for unknown users) and the
        titles to exclude (catalog positions, -1 padded: seen, held out, asked)."""
        # Capped, not refused: TF Serving's batching fails every request of a merged
        # batch when the model call fails, so one client's bad k must not be an error.
        k = tf.clip_by_value(tf.cast(k, tf.int32), 0, width)
        checks = [tf.debugging.assert_positive(tf.size(user_id), message="user_id must hold at least one id")]
        checks += _same_rows(user_id, f.SERVING_USER_ID, k=k, exclude_anime_ids=exclude_anime_ids)
        with tf.control_dependencies(checks):
            user_index = self.user_table.lookup(user_id)
        row = tf.where(user_index >= 0, user_index, self.empty_user_row)
        excluded = self._stored_exclusions(row, exclude_heldout)
        if exclude_anime_ids is not None:
            excluded.append(self.anime_table.lookup(exclude_anime_ids))
        return k, row, excluded

    def _scores(self, query: tf.Tensor, use_model: tf.Tensor, positions: tf.Tensor | None = None) -> tf.Tensor:
        """Retrieval scores of every title ([batch, catalog]) or of `positions` ([batch, M]):
        the model's for users with a query embedding, popularity for the others."""
        if positions is None:
            model = tf.matmul(query, self.catalog_embeddings_t) + self.catalog_bias[None, :]
            return tf.where(use_model[:, None], model, self.popularity[None, :])
        model = tf.reduce_sum(tf.gather(self.catalog_embeddings, positions) * query[:, None, :], axis=-1)
        model += tf.gather(self.catalog_bias, positions)
        return tf.where(use_model[:, None], model, tf.gather(self.popularity, positions))

    def _top(
        self, query, use_model, excluded: list, history, k: tf.Tensor, width: int, user_side=None, item_item=None
    ) -> dict:
        """The outputs for users with query embeddings `query` ([batch, dim]; popularity where
        not `use_model`), titles `excluded` (catalog positions, -1 padded) left out, reranked
        from their liked `history` (catalog positions) when it is given (`user_side` and
        `item_item`: RankingFeatures' when stored; None: computed from it)."""
        scores = _mask_columns(self._scores(query, use_model), tf.concat(excluded, axis=1))
        if history is not None:
            candidates, features, present = self.ranking_features(
                history, scores, max(width, self.candidates), self.item_item_candidates, user_side, item_item
            )
            positions, values = self._rank(candidates, features, present, use_model, width)
        else:
            values, positions = ranking.top_k(scores, width)
        return self._outputs(positions, values, use_model, k, width)

    def _outputs(self, positions: tf.Tensor, values: tf.Tensor, use_model: tf.Tensor, k: tf.Tensor, width) -> dict:
        # Beyond k[b], or when fewer titles are left unseen, the row is padding
        # (id -1, empty title), never a title the user has seen.
        valid = tf.math.is_finite(values) & (tf.range(width)[None, :] < k[:, None])
        return {
            f.OUTPUT_ANIME_IDS: tf.where(
                valid, tf.gather(self.catalog_anime_ids, positions), tf.constant(-1, tf.int64)
            ),
            f.OUTPUT_SCORES: tf.where(valid, values, float("-inf")),
            f.OUTPUT_TITLES: tf.where(valid, tf.gather(self.catalog_titles, positions), ""),
            f.OUTPUT_GENRES: tf.where(valid, tf.gather(self.catalog_genres, positions), ""),
            f.OUTPUT_IS_FALLBACK: tf.logical_not(use_model),
        }

    def _rank(self, candidates: tf.Tensor, features: tf.Tensor, present: tf.Tensor, use_model: tf.Tensor, width):
        """The ranker's top `width` of the candidates; fallback rows keep retrieval's
        (popularity) order."""
        ranked = self.ranker(features)
        # Fallback rows: the candidates' retrieval (popularity) scores, the first feature.
        ranked = tf.where(use_model[:, None], ranked, features[..., ranking.FEATURE_NAMES.index("retrieval_score")])
        ranked = tf.where(present, ranked, float("-inf"))
        order = tf.math.top_k(ranked, k=width)
        return tf.gather(candidates, order.indices, batch_dims=1), order.values

    def _rank_retrieved(self, user_id, k, exclude_anime_ids, retrieved, width, exact):
        """`recommend`'s outputs in `width` columns, from retrieval's top titles found by an
        index (a ScaNN index: animerec.serving.scann_index) instead of the product with
        the whole catalog: `retrieved` holds each user's best max(width, N) unseen catalog
        positions, -1 padded; `exact`: whether the index scored every title exactly. They
        are rescored here, as the item-item candidates are, and the second stage runs as in
        `recommend`."""
        enough = tf.debugging.assert_greater_equal(
            tf.shape(retrieved)[1],
            tf.maximum(width, self.candidates),
            message="retrieved must hold max(width, N) titles a user",
        )
        with tf.control_dependencies([enough]):
            # In catalog order: among equal scores the top-k below then keeps catalog order,
            # as `recommend`'s top-k over the whole catalog does.
            retrieved = tf.sort(retrieved, axis=1)
        k, row, excluded = self._known_users(user_id, k, width, exclude_anime_ids, exclude_heldout=True)
        query, use_model = tf.gather(self.user_embeddings, row), tf.gather(self.has_history, row)
        history = _padded_rows(self.liked_values, self.liked_splits, row)
        exclusion = _mask_columns(tf.zeros([tf.shape(row)[0], self.catalog_size]), tf.concat(excluded, axis=1))

        def score_of(positions: tf.Tensor) -> tf.Tensor:
            at = tf.maximum(positions, 0)
            scores = self._scores(query, use_model, at) + tf.gather(exclusion, at, batch_dims=1)
            return tf.where(positions >= 0, scores, float("-inf"))

        top = tf.math.top_k(score_of(retrieved), k=tf.shape(retrieved)[1])
        candidates, features, present = self.ranking_features.of_retrieved(
            history,
            tf.gather(tf.maximum(retrieved, 0), top.indices, batch_dims=1),
            top.values,
            exclusion,
            score_of,
            self.item_item_candidates,
            exact=exact,
            user_side=self._user_side(row),
            item_item=self._stored_item_item(row, excluded[-1]),
        )
        positions, values = self._rank(candidates, features, present, use_model, width)
        return self._outputs(positions, values, use_model, k, width)

    def _from_liked(self, liked_anime_ids: tf.Tensor, k: tf.Tensor, exclude_anime_ids: tf.Tensor) -> dict:
        """Row b: the top k[b] for a user the model may never have seen, from their liked
        titles (anime ids, -1 padded; ids outside the catalog are ignored): the query
        tower runs on them now, as it ran at export time for known users. Liked and
        excluded titles are left out."""
        k = tf.clip_by_value(tf.cast(k, tf.int32), 0, self.max_k)
        checks = _same_rows(liked_anime_ids, f.SERVING_LIKED, k=k, exclude_anime_ids=exclude_anime_ids)
        with tf.control_dependencies(checks):
            liked = self.anime_table.lookup(liked_anime_ids)
        # Titles no training user liked have no trained embedding: they only count as seen.
        vocab_index = tf.gather(self.catalog_anime_index, tf.maximum(liked, 0))
        known = (liked >= 0) & (vocab_index < self.anime_vocab_size)
        vocab_index = tf.ragged.boolean_mask(vocab_index, known)
        query = self._query_tower(
            tf.fill([tf.shape(liked)[0]], self.empty_user_row),
            vocab_index,
            exclude=-tf.ones([tf.shape(liked)[0]], tf.int64),
        )
        use_model = tf.reduce_any(known, axis=1)
        excluded = [liked, self.anime_table.lookup(exclude_anime_ids)]
        history = liked if self.second_stage is not None else None
        return self._top(query, use_model, excluded, history, k, self.max_k)

    def _all_rows(self, user_id: tf.Tensor) -> tf.Tensor:
        return tf.fill(tf.shape(user_id), self.top_k)

    @_signature([tf.TensorSpec([None], tf.int64, name=f.SERVING_USER_ID)])
    def serve(self, user_id):
        return self._recommend(user_id, self._all_rows(user_id), self.top_k, None)

    @_signature(RECOMMEND_INPUTS)
    def recommend(self, user_id, k, exclude_anime_ids):
        return self._recommend(user_id, k, self.max_k, exclude_anime_ids)

    @_signature(RECOMMEND_INPUTS)
    def recommend_for_eval(self, user_id, k, exclude_anime_ids):
        return self._recommend(user_id, k, self.max_k, exclude_anime_ids, exclude_heldout=False)

    @_signature(RECOMMEND_INPUTS)
    def retrieve_for_eval(self, user_id, k, exclude_anime_ids):
        return self._recommend(user_id, k, self.max_k, exclude_anime_ids, exclude_heldout=False, two_stage=False)

    @_signature(FROM_LIKED_INPUTS)
    def recommend_from_liked(self, liked_anime_ids, k, exclude_anime_ids):
        return self._from_liked(liked_anime_ids, k, exclude_anime_ids)

    @_signature([tf.TensorSpec([None], tf.string, name=f.SERVING_EXAMPLES)])
    def serve_tf_example(self, examples):
        ids = tf.io.parse_example(examples, {f.USER_ID: tf.io.VarLenFeature(tf.int64)})[f.USER_ID]
        # An Example without exactly one user_id is served as an unknown user (the popular
        # fallback, is_fallback true), not refused: TF Serving's batching fails every
        # request merged with one whose call fails. (Bytes that are no Example at all, or
        # a user_id stored as bytes or floats, still fail the call: parse_example refuses them.)
        batch = tf.shape(examples)[0]
        row = tf.cast(ids.indices[:, 0], tf.int32)
        count = tf.math.bincount(row, minlength=batch, maxlength=batch)
        first = ids.indices[:, 1] == 0
        user_id = tf.tensor_scatter_nd_update(
            tf.fill([batch], tf.constant(-1, tf.int64)), row[first][:, None], ids.values[first]
        )
        user_id = tf.where(count == 1, user_id, -1)
        return self._recommend(user_id, self._all_rows(user_id), self.top_k, None)

    def signatures(self) -> dict:
        return {
            f.DEFAULT_SIGNATURE: self.serve.get_concrete_function(),
            f.RECOMMEND_SIGNATURE: self.recommend.get_concrete_function(),
            f.TF_EXAMPLE_SIGNATURE: self.serve_tf_example.get_concrete_function(),
            f.FROM_LIKED_SIGNATURE: self.recommend_from_liked.get_concrete_function(),
            f.EVAL_SIGNATURE: self.recommend_for_eval.get_concrete_function(),
            f.EVAL_RETRIEVAL_SIGNATURE: self.retrieve_for_eval.get_concrete_function(),
        }


def warmup_requests(module: RecommenderModule) -> list:
    """One PredictRequest per signature (a known and an unknown user, k, an exclusion),
    for TF Serving to run before it serves a version."""
    from tensorflow_serving.apis import predict_pb2

    known = module.known_user_ids.numpy()[:1].tolist()
    users = np.array(known + [-1], np.int64)
    example = tf.train.Example()
    example.features.feature[f.USER_ID].int64_list.value.append(int(users[0]))
    ranked = {
        f.SERVING_USER_ID: users,
        f.SERVING_K: np.full(len(users), module.max_k, np.int32),
        f.SERVING_EXCLUDE: np.array([[-1, module.catalog_anime_ids.numpy()[0]]] * len(users), np.int64),
    }
    inputs = {
        f.DEFAULT_SIGNATURE: {f.SERVING_USER_ID: users},
        f.TF_EXAMPLE_SIGNATURE: {f.SERVING_EXAMPLES: np.array([example.SerializeToString()], object)},
        f.RECOMMEND_SIGNATURE: ranked,
        f.FROM_LIKED_SIGNATURE: {
            f.SERVING_LIKED: ranked[f.SERVING_EXCLUDE],
            f.SERVING_K: ranked[f.SERVING_K],
            f.SERVING_EXCLUDE: np.full((len(users), 1), -1, np.int64),
        },
        f.EVAL_SIGNATURE: ranked,
        f.EVAL_RETRIEVAL_SIGNATURE: ranked,
    }
    requests = []
    for name, tensors in inputs.items():
        request = predict_pb2.PredictRequest()
        request.model_spec.name = f.MODEL_NAME
        request.model_spec.signature_name = name
        for alias, value in tensors.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
        requests.append(request)
    return requests


def write_warmup_file(module: RecommenderModule, path: str) -> None:
    """assets.extra/tf_serving_warmup_requests: the warmup_requests as PredictionLog TFRecords."""
    from tensorflow_serving.apis import prediction_log_pb2

    target = os.path.join(path, f.WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(target))
    with tf.io.TFRecordWriter(target) as writer:
        for request in warmup_requests(module):
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_serving_model(
    model: RetrievalModel,
    data: TrainingData,
    catalog_embeddings: np.ndarray,
    top_k: int,
    path: str,
    catalog_bias: np.ndarray | None = None,
    second_stage: SecondStage | None = None,
) -> None:
    module = RecommenderModule(model, data, catalog_embeddings, top_k, catalog_bias, second_stage)
    # tf.saved_model.save logs "Assets written to ..." at INFO on every export: noise in a run's output.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(max(level, std_logging.WARNING))
    try:
        tf.saved_model.save(module, path, signatures=module.signatures())
    finally:
        logger.setLevel(level)
    write_warmup_file(module, path)
