"""The serving SavedModel: two stages over the whole catalog, seen titles excluded.

Stock TensorFlow ops only, so stock TF Serving loads it. The query tower runs at
export time: each known user's embedding (from their liked history) is stored,
so retrieval is a lookup, one product with the catalog matrix, the exclusions
and a top-N. The ranker (animerec.model.ranking) then reorders those N
candidates (max(N, k) when k is larger) from the user's liked history and the
candidates' item-item, genre and popularity features, and the top k are
returned; `scores` are the ranker's logits. Signatures (names in animerec.features):
  serving_default(user_id[B] int64) -> anime_ids[B,K], scores[B,K], titles[B,K], genres[B,K], is_fallback[B]
  recommend(user_id[B], k scalar int32, exclude_anime_ids[B,M] int64, -1 padded) -> the same, top k
  serving_tf_example(examples[B] string: serialized tf.Example with user_id) -> the same as serving_default
  recommend_for_eval: as recommend, but titles held out for evaluation are not excluded (the Evaluator's view)
  retrieve_for_eval: as recommend_for_eval, retrieval alone (the first stage, for the Evaluator's ablation)
A user id the model has not seen, or one without a liked title, gets the most
popular unseen titles with is_fallback=True instead of an error. Slots beyond
the titles left unseen are padded with anime id -1, score -inf and "".
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from animerec import features as f
from animerec.model.data import TrainingData
from animerec.model.retrieval import RetrievalModel, query_embeddings
from animerec.model.two_stage import SecondStage, liked_positions

# user_id, k and per-request exclusions: the inputs of `recommend` and `recommend_for_eval`.
RECOMMEND_INPUTS = [
    tf.TensorSpec([None], tf.int64, name=f.SERVING_USER_ID),
    tf.TensorSpec([], tf.int32, name=f.SERVING_K),
    tf.TensorSpec([None, None], tf.int64, name=f.SERVING_EXCLUDE),
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


def _mask_columns(scores: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """Sets scores[b, columns[b, j]] to -inf for every column >= 0 (-1 is padding)."""
    batch, width = tf.shape(columns)[0], tf.shape(columns)[1]
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, width])
    indices = tf.stack([rows, tf.maximum(columns, 0)], axis=-1)
    # min(score, +inf) leaves the padding slots alone, so no boolean mask is needed.
    updates = tf.where(columns >= 0, float("-inf"), float("inf"))
    return tf.tensor_scatter_nd_min(scores, indices, updates)


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
            self.ranker = second_stage.ranker
            self.candidates = min(second_stage.candidates, len(catalog.anime_id))
            self.item_item_candidates = min(second_stage.item_item_candidates, len(catalog.anime_id))
            liked_splits, liked_values = _csr_int32(*liked_positions(data))
            self.liked_splits = tf.Variable(liked_splits, trainable=False, name="liked_splits")
            self.liked_values = tf.Variable(liked_values, trainable=False, name="liked_values")
        self.top_k = min(top_k, len(catalog.anime_id))
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
        self.catalog_titles = tf.Variable(catalog.titles, trainable=False, name="catalog_titles")
        self.catalog_genres = tf.Variable(catalog.genres, trainable=False, name="catalog_genres")
        popularity = data.likes_by_catalog_position().astype(np.float32)
        self.popularity = tf.Variable(popularity / max(popularity.sum(), 1.0), trainable=False, name="popularity")
        n_rows = len(data.seen_splits) - 1  # user indices + the empty row for unknown users
        self.empty_user_row = data.user_vocab_size
        rows = np.arange(n_rows)
        self.user_embeddings = tf.Variable(query_embeddings(model, data, rows), trainable=False, name="user_embeddings")
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

    def _recommend(
        self,
        user_id: tf.Tensor,
        k: tf.Tensor,
        exclude_anime_ids: tf.Tensor | None,
        exclude_heldout: bool = True,
        two_stage: bool = True,
    ) -> dict:
        k = tf.cast(k, tf.int32)
        checks = [
            tf.debugging.assert_positive(k, message="k must be positive"),
            tf.debugging.assert_less_equal(
                k, self.catalog_size, message=f"k must be at most the catalog size ({self.catalog_size})"
            ),
            tf.debugging.assert_positive(tf.size(user_id), message="user_id must hold at least one id"),
        ]
        with tf.control_dependencies(checks):
            user_index = self.user_table.lookup(user_id)
        row = tf.where(user_index >= 0, user_index, self.empty_user_row)
        use_model = tf.gather(self.has_history, row)
        query = tf.gather(self.user_embeddings, row)
        scores = tf.where(
            use_model[:, None],
            tf.matmul(query, self.catalog_embeddings_t) + self.catalog_bias[None, :],
            self.popularity[None, :],
        )
        excluded = [_padded_rows(self.seen_values, self.seen_splits, row)]
        if exclude_heldout:
            excluded.append(_padded_rows(self.heldout_values, self.heldout_splits, row))
        if exclude_anime_ids is not None:
            excluded.append(self.anime_table.lookup(exclude_anime_ids))
        scores = _mask_columns(scores, tf.concat(excluded, axis=1))
        if two_stage and self.second_stage is not None:
            positions, values = self._rerank(row, use_model, scores, k)
        else:
            top = tf.math.top_k(scores, k=k)
            positions, values = top.indices, top.values
        # When fewer than k titles are left unseen, the rest of the list is padding
        # (id -1, empty title), never a title the user has seen.
        valid = tf.math.is_finite(values)
        return {
            f.OUTPUT_ANIME_IDS: tf.where(
                valid, tf.gather(self.catalog_anime_ids, positions), tf.constant(-1, tf.int64)
            ),
            f.OUTPUT_SCORES: values,
            f.OUTPUT_TITLES: tf.where(valid, tf.gather(self.catalog_titles, positions), ""),
            f.OUTPUT_GENRES: tf.where(valid, tf.gather(self.catalog_genres, positions), ""),
            f.OUTPUT_IS_FALLBACK: tf.logical_not(use_model),
        }

    def _rerank(self, row: tf.Tensor, use_model: tf.Tensor, scores: tf.Tensor, k: tf.Tensor):
        """The ranker's top k of the candidates (retrieval's top max(N, k) and the item-item
        top M); fallback rows keep retrieval's (popularity) order."""
        history = _padded_rows(self.liked_values, self.liked_splits, row)
        candidates, features, present = self.ranking_features(
            history, scores, tf.maximum(k, self.candidates), self.item_item_candidates
        )
        ranked = self.ranker(features)
        ranked = tf.where(use_model[:, None], ranked, tf.gather(scores, candidates, batch_dims=1))
        ranked = tf.where(present, ranked, float("-inf"))
        order = tf.math.top_k(ranked, k=k)
        return tf.gather(candidates, order.indices, batch_dims=1), order.values

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name=f.SERVING_USER_ID)])
    def serve(self, user_id):
        return self._recommend(user_id, tf.constant(self.top_k), None)

    @tf.function(input_signature=RECOMMEND_INPUTS)
    def recommend(self, user_id, k, exclude_anime_ids):
        return self._recommend(user_id, k, exclude_anime_ids)

    @tf.function(input_signature=RECOMMEND_INPUTS)
    def recommend_for_eval(self, user_id, k, exclude_anime_ids):
        return self._recommend(user_id, k, exclude_anime_ids, exclude_heldout=False)

    @tf.function(input_signature=RECOMMEND_INPUTS)
    def retrieve_for_eval(self, user_id, k, exclude_anime_ids):
        return self._recommend(user_id, k, exclude_anime_ids, exclude_heldout=False, two_stage=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_tf_example(self, examples):
        parsed = tf.io.parse_example(examples, {f.USER_ID: tf.io.FixedLenFeature([1], tf.int64)})
        user_id = tf.reshape(parsed[f.USER_ID], [-1])
        return self._recommend(user_id, tf.constant(self.top_k), None)

    def signatures(self) -> dict:
        return {
            "serving_default": self.serve.get_concrete_function(),
            f.RECOMMEND_SIGNATURE: self.recommend.get_concrete_function(),
            f.TF_EXAMPLE_SIGNATURE: self.serve_tf_example.get_concrete_function(),
            f.EVAL_SIGNATURE: self.recommend_for_eval.get_concrete_function(),
            f.EVAL_RETRIEVAL_SIGNATURE: self.retrieve_for_eval.get_concrete_function(),
        }


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
    tf.saved_model.save(module, path, signatures=module.signatures())
