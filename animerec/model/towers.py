"""The two towers: a query tower over the user and a candidate tower over the anime.

Both end in L2-normalized embeddings, so a score is a cosine similarity.
"""

from __future__ import annotations

import tensorflow as tf

from animerec import features as f


def _masked_mean(embeddings: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """Mean of [batch, tokens, dim] over tokens whose id is not padding."""
    mask = tf.cast(tf.not_equal(ids, f.PAD_TOKEN), embeddings.dtype)[..., None]
    return tf.reduce_sum(embeddings * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


class CandidateTower(tf.keras.Model):
    """Anime id embedding plus bag-of-words embeddings of name, genres and synopsis.

    The out-of-vocabulary anime index (a title nobody liked in training) gets
    no id embedding, so such a title is placed by its text alone.
    """

    def __init__(self, anime_vocab_size: int, text_vocab_sizes: dict[str, int], dim: int, **kwargs):
        super().__init__(**kwargs)
        self.anime_vocab_size = anime_vocab_size
        # Index anime_vocab_size is the OOV bucket; its row is never used.
        self.id_embedding = tf.keras.layers.Embedding(anime_vocab_size + 1, dim, name="anime_id_embedding")
        self.text_embeddings = {
            name: tf.keras.layers.Embedding(size + 1, dim, name=f"{name}_embedding")
            for name, size in sorted(text_vocab_sizes.items())
        }
        self.projection = tf.keras.Sequential(
            [tf.keras.layers.Dense(dim * 2, activation="relu"), tf.keras.layers.Dense(dim)], name="candidate_projection"
        )

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        anime_index = inputs[f.ANIME_INDEX]
        known = tf.cast(anime_index < self.anime_vocab_size, tf.float32)[:, None]
        parts = [self.id_embedding(tf.minimum(anime_index, self.anime_vocab_size)) * known]
        for name, embedding in self.text_embeddings.items():
            parts.append(_masked_mean(embedding(inputs[name]), inputs[name]))
        return tf.math.l2_normalize(self.projection(tf.concat(parts, axis=1)), axis=1)


class QueryTower(tf.keras.Model):
    """A user id embedding and the mean embedding of the user's liked history.

    `history` is a RaggedTensor of anime indices per user. During training the
    target item is in its own user's history; `exclude` (the target's anime
    index, or -1) takes it out of the mean so the model cannot copy it.
    """

    def __init__(
        self,
        user_vocab_size: int,
        anime_vocab_size: int,
        dim: int,
        use_user_embedding: bool = True,
        history_embedding: tf.keras.layers.Embedding | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.use_user_embedding = use_user_embedding
        if use_user_embedding:
            self.user_embedding = tf.keras.layers.Embedding(user_vocab_size + 1, dim, name="user_id_embedding")
        # Sharing the candidate tower's id embedding puts history and candidates in one item space.
        self.history_embedding = history_embedding or tf.keras.layers.Embedding(
            anime_vocab_size + 1, dim, name="history_embedding"
        )
        self.projection = tf.keras.Sequential(
            [tf.keras.layers.Dense(dim * 2, activation="relu"), tf.keras.layers.Dense(dim)], name="query_projection"
        )

    def call(self, user_index: tf.Tensor, history: tf.RaggedTensor, exclude: tf.Tensor) -> tf.Tensor:
        if not self.history_embedding.built:
            self.history_embedding(tf.zeros([0], tf.int64))  # builds it under its own name
        # A fused gather-and-sum whose gradient is one dense [items, dim] matrix, not an
        # IndexedSlices row per history item. A history built from_value_rowids (the
        # training input does that) keeps its row ids, so none are recomputed here.
        summed = tf.sparse.segment_sum(
            self.history_embedding.embeddings, history.flat_values, history.value_rowids(), num_segments=history.nrows()
        )
        count = tf.cast(history.row_lengths(), tf.float32)
        has_exclude = exclude >= 0
        summed -= tf.where(has_exclude[:, None], self.history_embedding(tf.maximum(exclude, 0)), 0.0)
        count -= tf.cast(has_exclude, tf.float32)
        history_mean = summed / tf.maximum(count, 1.0)[:, None]
        parts = [history_mean]
        if self.use_user_embedding:
            parts.append(self.user_embedding(user_index))
        return tf.math.l2_normalize(self.projection(tf.concat(parts, axis=1)), axis=1)
