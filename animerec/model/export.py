"""The serving SavedModel: top-k retrieval over the whole catalog, seen titles excluded.

Brute-force scoring with stock TensorFlow ops only, so stock TF Serving loads
it. Signatures (names in animerec.features):
  serving_default(user_id[B] int64) -> anime_ids[B,K], scores[B,K], titles[B,K], genres[B,K], is_fallback[B]
  recommend(user_id[B], k scalar int32, exclude_anime_ids[B,M] int64, -1 padded) -> the same, top k
  serving_tf_example(examples[B] string: serialized tf.Example with user_id) -> the same as serving_default
  recommend_for_eval: as recommend, but titles held out for evaluation are not excluded (the Evaluator's view)
A user id the model has not seen, or one without a liked title, gets the most
popular unseen titles with is_fallback=True instead of an error. Slots beyond
the titles left unseen are padded with anime id -1, score -inf and "".
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from animerec import features as f
from animerec.model.data import TrainingData
from animerec.model.retrieval import RetrievalModel

# user_id, k and per-request exclusions: the inputs of `recommend` and `recommend_for_eval`.
RECOMMEND_INPUTS = [
    tf.TensorSpec([None], tf.int64, name=f.SERVING_USER_ID),
    tf.TensorSpec([], tf.int32, name=f.SERVING_K),
    tf.TensorSpec([None, None], tf.int64, name=f.SERVING_EXCLUDE),
]


def _rows(values: tf.Variable, splits: tf.Variable, row: tf.Tensor) -> tf.RaggedTensor:
    """Rows `row` of a CSR table, touching only those rows (not the whole table)."""
    positions = tf.ragged.range(tf.gather(splits, row), tf.gather(splits, row + 1))
    return tf.gather(values, positions)


class RecommenderModule(tf.Module):
    def __init__(
        self,
        model: RetrievalModel,
        data: TrainingData,
        catalog_embeddings: np.ndarray,
        top_k: int,
        catalog_bias: np.ndarray | None = None,
    ):
        super().__init__()
        catalog = data.catalog
        self.query_tower = model.query_tower
        self.top_k = min(top_k, len(catalog.anime_id))
        self.catalog_size = len(catalog.anime_id)
        self.catalog_embeddings = tf.Variable(catalog_embeddings, trainable=False, name="catalog_embeddings")
        bias = catalog_bias if catalog_bias is not None else np.zeros(len(catalog.anime_id), np.float32)
        self.catalog_bias = tf.Variable(bias, trainable=False, name="catalog_bias")
        self.catalog_anime_ids = tf.Variable(catalog.anime_id, trainable=False, name="catalog_anime_ids")
        self.catalog_titles = tf.Variable(catalog.titles, trainable=False, name="catalog_titles")
        self.catalog_genres = tf.Variable(catalog.genres, trainable=False, name="catalog_genres")
        popularity = data.likes_by_catalog_position().astype(np.float32)
        self.popularity = tf.Variable(popularity / max(popularity.sum(), 1.0), trainable=False, name="popularity")
        self.history_splits = tf.Variable(data.history_splits, trainable=False, name="history_splits")
        self.history_values = tf.Variable(data.history_values, trainable=False, name="history_values")
        self.seen_splits = tf.Variable(data.seen_splits, trainable=False, name="seen_splits")
        self.seen_values = tf.Variable(data.seen_values, trainable=False, name="seen_values")
        n_rows = len(data.seen_splits)
        heldout_splits = data.heldout_splits if data.heldout_splits is not None else np.zeros(n_rows, np.int64)
        heldout_values = data.heldout_values if data.heldout_values is not None else np.zeros(0, np.int64)
        self.heldout_splits = tf.Variable(heldout_splits, trainable=False, name="heldout_splits")
        self.heldout_values = tf.Variable(heldout_values, trainable=False, name="heldout_values")
        self.empty_user_row = data.user_vocab_size
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
                tf.constant(catalog.anime_id, tf.int64), tf.range(self.catalog_size, dtype=tf.int64)
            ),
            default_value=-1,
        )

    def _recommend(
        self, user_id: tf.Tensor, k: tf.Tensor, exclude_anime_ids: tf.Tensor, exclude_heldout: bool = True
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
        known = user_index >= 0
        row = tf.where(known, user_index, self.empty_user_row)
        history = _rows(self.history_values, self.history_splits, row)
        use_model = tf.logical_and(known, history.row_lengths() > 0)
        query = self.query_tower(row, history, exclude=-tf.ones_like(row))
        scores = tf.where(
            use_model[:, None],
            tf.matmul(query, self.catalog_embeddings, transpose_b=True) + self.catalog_bias[None, :],
            tf.broadcast_to(self.popularity[None, :], [tf.shape(row)[0], self.catalog_size]),
        )
        seen = _rows(self.seen_values, self.seen_splits, row)
        extra = tf.RaggedTensor.from_tensor(self.anime_table.lookup(exclude_anime_ids))
        excluded = [seen, extra]
        if exclude_heldout:
            excluded.append(_rows(self.heldout_values, self.heldout_splits, row))
        excluded = tf.concat(excluded, axis=1)
        excluded = tf.ragged.boolean_mask(excluded, excluded >= 0)
        indices = tf.stack([excluded.value_rowids(), excluded.flat_values], axis=1)
        scores = tf.tensor_scatter_nd_update(scores, indices, tf.fill([tf.shape(indices)[0]], float("-inf")))
        top = tf.math.top_k(scores, k=k)
        # When fewer than k titles are left unseen, the rest of the list is padding
        # (id -1, empty title), never a title the user has seen.
        valid = tf.math.is_finite(top.values)
        return {
            f.OUTPUT_ANIME_IDS: tf.where(
                valid, tf.gather(self.catalog_anime_ids, top.indices), tf.constant(-1, tf.int64)
            ),
            f.OUTPUT_SCORES: top.values,
            f.OUTPUT_TITLES: tf.where(valid, tf.gather(self.catalog_titles, top.indices), ""),
            f.OUTPUT_GENRES: tf.where(valid, tf.gather(self.catalog_genres, top.indices), ""),
            f.OUTPUT_IS_FALLBACK: tf.logical_not(use_model),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name=f.SERVING_USER_ID)])
    def serve(self, user_id):
        no_exclusions = tf.fill([tf.shape(user_id)[0], 0], tf.constant(-1, tf.int64))
        return self._recommend(user_id, tf.constant(self.top_k), no_exclusions)

    @tf.function(input_signature=RECOMMEND_INPUTS)
    def recommend(self, user_id, k, exclude_anime_ids):
        return self._recommend(user_id, k, exclude_anime_ids)

    @tf.function(input_signature=RECOMMEND_INPUTS)
    def recommend_for_eval(self, user_id, k, exclude_anime_ids):
        return self._recommend(user_id, k, exclude_anime_ids, exclude_heldout=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_tf_example(self, examples):
        parsed = tf.io.parse_example(examples, {f.USER_ID: tf.io.FixedLenFeature([1], tf.int64)})
        user_id = tf.reshape(parsed[f.USER_ID], [-1])
        no_exclusions = tf.fill([tf.shape(user_id)[0], 0], tf.constant(-1, tf.int64))
        return self._recommend(user_id, tf.constant(self.top_k), no_exclusions)

    def signatures(self) -> dict:
        return {
            "serving_default": self.serve.get_concrete_function(),
            f.RECOMMEND_SIGNATURE: self.recommend.get_concrete_function(),
            f.TF_EXAMPLE_SIGNATURE: self.serve_tf_example.get_concrete_function(),
            f.EVAL_SIGNATURE: self.recommend_for_eval.get_concrete_function(),
        }


def export_serving_model(
    model: RetrievalModel,
    data: TrainingData,
    catalog_embeddings: np.ndarray,
    top_k: int,
    path: str,
    catalog_bias: np.ndarray | None = None,
) -> None:
    module = RecommenderModule(model, data, catalog_embeddings, top_k, catalog_bias)
    tf.saved_model.save(module, path, signatures=module.signatures())
