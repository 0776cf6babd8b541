"""The TFRS retrieval model: in-batch softmax with the logQ correction and score weights."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from animerec import features as f
from animerec.model.data import TrainingData
from animerec.model.towers import CandidateTower, QueryTower


def in_batch_softmax_loss(
    query: tf.Tensor,
    candidates: tf.Tensor,
    positions: tf.Tensor,
    sampling_probability: tf.Tensor,
    sample_weight: tf.Tensor,
    temperature: float,
) -> tf.Tensor:
    """tfrs.tasks.Retrieval's loss (remove_accidental_hits=True, logQ, SUM reduction), cheaper.

    `candidates` holds each distinct item of the batch once ([U, dim], from
    tf.unique) and `positions` the column of each row's own item. The task
    scores every row against all B rows' candidates, masks the other copies of
    the row's own item and counts each other item once per copy; adding
    log(copies) to an item's logit everywhere but in its own rows' positive
    column gives the same value from a [B, U] matrix, with the candidate tower
    run once per distinct item and no [B, B] masks.
    """
    logits = tf.matmul(query, candidates, transpose_b=True) / temperature
    copies = tf.math.bincount(tf.cast(positions, tf.int32), minlength=tf.shape(candidates)[0], dtype=logits.dtype)
    log_copies = tf.math.log(copies)
    logits += (log_copies - tf.math.log(sampling_probability))[None, :]
    own = tf.stack([tf.range(tf.shape(positions, out_type=positions.dtype)[0]), positions], axis=1)
    logits = tf.tensor_scatter_nd_sub(logits, own, tf.gather(log_copies, positions))
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positions, logits=logits)
    return tf.reduce_sum(losses * sample_weight)


def ragged_from_csr(splits, values) -> tf.RaggedTensor:
    return tf.RaggedTensor.from_row_splits(
        values=tf.convert_to_tensor(values, tf.int64), row_splits=tf.convert_to_tensor(splits, tf.int64)
    )


class RetrievalModel(tfrs.Model):
    """Scores (user, liked anime) pairs against the other candidates of the batch.

    Popular titles are over-represented as in-batch negatives; subtracting
    log(sampling probability) from their logits (the logQ correction) undoes
    that bias. Liked rows are weighted by their score.
    """

    def __init__(
        self,
        data: TrainingData,
        embedding_dim: int,
        temperature: float,
        use_user_embedding: bool = True,
        share_item_embeddings: bool = False,
    ):
        super().__init__()
        self.candidate_tower = CandidateTower(data.anime_vocab_size, data.text_vocab_sizes, embedding_dim)
        shared = self.candidate_tower.id_embedding if share_item_embeddings else None
        self.query_tower = QueryTower(
            data.user_vocab_size, data.anime_vocab_size, embedding_dim, use_user_embedding, shared
        )
        self.candidate_tokens = {name: tf.constant(t) for name, t in data.candidate_tokens_by_anime_index.items()}
        counts = data.item_counts().astype(np.float64)
        self.sampling_probability = tf.constant(np.maximum(counts, 1.0) / counts.sum(), tf.float32)
        self.temperature = temperature

    def candidate_features(self, anime_index: tf.Tensor) -> dict:
        out = {name: tf.gather(tokens, anime_index) for name, tokens in self.candidate_tokens.items()}
        out[f.ANIME_INDEX] = anime_index
        return out

    # AutoGraph would otherwise transpile every tf_keras layer call it reaches (tf_keras is
    # not on its skip list): 15-20 s before the first step. Nothing here branches on tensors.
    @tf.autograph.experimental.do_not_convert
    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        user_index, anime_index, weight, history_values, history_rows = inputs
        history = tf.RaggedTensor.from_value_rowids(
            history_values, history_rows, nrows=tf.shape(user_index, out_type=tf.int64)[0], validate=False
        )
        query = self.query_tower(user_index, history, exclude=anime_index)
        items, positions = tf.unique(anime_index, out_idx=anime_index.dtype)
        candidates = self.candidate_tower(self.candidate_features(items))
        return in_batch_softmax_loss(
            query, candidates, positions, tf.gather(self.sampling_probability, items), weight, self.temperature
        )


def build_model(
    data: TrainingData,
    embedding_dim: int,
    temperature: float,
    learning_rate: float,
    use_user_embedding: bool = True,
    share_item_embeddings: bool = False,
) -> RetrievalModel:
    model = RetrievalModel(data, embedding_dim, temperature, use_user_embedding, share_item_embeddings)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=learning_rate))
    return model


def build_model_from_config(data: TrainingData, config) -> RetrievalModel:
    """The model a TrainingConfig (animerec.config) describes."""
    return build_model(
        data,
        config.embedding_dim,
        config.temperature,
        config.learning_rate,
        config.use_user_embedding,
        config.share_item_embeddings,
    )


def with_histories(dataset: tf.data.Dataset, data: TrainingData) -> tf.data.Dataset:
    """Adds each row's user's liked history (flat anime indices and each one's row in the
    batch) to (user index, anime index, weight) batches: RetrievalModel's training
    input. The gather runs in tf.data's threads, beside the training step; numpy does it
    in a third of the time tf.gather on a RaggedTensor and value_rowids take."""
    splits, values = data.history_splits, data.history_values

    def gather(user_index: np.ndarray):
        starts = splits[user_index]
        lengths = splits[user_index + 1] - starts
        rows = np.repeat(np.arange(len(user_index), dtype=np.int64), lengths)
        offsets = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return values[starts[rows] + offsets].astype(np.int64), rows

    @tf.autograph.experimental.do_not_convert  # nothing to convert
    def add(user_index, anime_index, weight):
        history_values, history_rows = tf.numpy_function(gather, [user_index], [tf.int64, tf.int64], stateful=False)
        return (
            user_index,
            anime_index,
            weight,
            tf.ensure_shape(history_values, [None]),
            tf.ensure_shape(history_rows, [None]),
        )

    return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


# Rows a pass hands to tf.data at a time: the int64 copies stay small at 100M rows.
PASS_CHUNK = 1 << 20


def training_dataset(data: TrainingData, batch_size: int, seed: int = 0, repeat: bool = False) -> tf.data.Dataset:
    """Training batches of the liked rows held in `data` (user_index, anime_index, weight:
    the fitting rows, validation rows left out): one pass, or passes without end with
    `repeat` (the Trainer counts epochs in steps). Each pass is a new random permutation
    of every row (4 bytes a row, beside the rows' own 12), gathered column by column in
    chunks: a per-row shuffle buffer moves rows through tf.data one at a time, which costs
    more CPU than a training step here. Repeated, a batch may span two passes, so every
    row comes once in each pass's worth of rows."""
    columns = (
        np.asarray(data.user_index, np.int32),
        np.asarray(data.anime_index, np.int32),
        np.asarray(data.weight, np.float32),
    )
    rows = len(columns[0])
    if rows == 0:
        raise ValueError("no training rows: no liked row is left to fit on (see the conversion report)")
    rng = np.random.default_rng(seed)  # outside the generator: each pass and each iteration reshuffle

    def passes():
        while True:
            order = np.arange(rows, dtype=np.int32)
            rng.shuffle(order)  # in place: the same permutation as rng.permutation(rows), at half the memory
            for start in range(0, rows, PASS_CHUNK):
                chunk = order[start : start + PASS_CHUNK]
                yield columns[0][chunk].astype(np.int64), columns[1][chunk].astype(np.int64), columns[2][chunk]
            if not repeat:
                return

    signature = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32))
    dataset = tf.data.Dataset.from_generator(passes, output_signature=signature)
    batch_size = min(batch_size, rows)
    # One pass: the last, smaller batch is dropped unless it is the only one (as before).
    dataset = dataset.rebatch(batch_size, drop_remainder=repeat or rows > batch_size).prefetch(1)
    return with_histories(dataset, data)


def catalog_embeddings(model: RetrievalModel, data: TrainingData, batch_size: int = 4096) -> np.ndarray:
    """Candidate embeddings for every catalog position (cold-start titles included)."""
    catalog = data.catalog
    parts = []
    for start in range(0, len(catalog.anime_id), batch_size):
        batch = {name: tf.constant(t[start : start + batch_size]) for name, t in catalog.tokens.items()}
        batch[f.ANIME_INDEX] = tf.constant(catalog.anime_index[start : start + batch_size])
        parts.append(model.candidate_tower(batch).numpy())
    return np.concatenate(parts)


def query_embeddings(
    model: RetrievalModel, data: TrainingData, user_index: np.ndarray, batch_size: int = 4096
) -> np.ndarray:
    history = ragged_from_csr(data.history_splits, data.history_values)
    parts = []
    for start in range(0, len(user_index), batch_size):
        idx = tf.constant(user_index[start : start + batch_size])
        parts.append(model.query_tower(idx, tf.gather(history, idx), exclude=-tf.ones_like(idx)).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def popularity_bias(data: TrainingData, prior: float, temperature: float) -> np.ndarray:
    """Per catalog position, in cosine units: prior * temperature * log(1 + training likes)."""
    return (prior * temperature * np.log1p(data.likes_by_catalog_position())).astype(np.float32)
