"""The TFRS retrieval model: in-batch softmax with the logQ correction and score weights."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from animerec import features as f
from animerec.model.data import TrainingData, glob_files
from animerec.model.towers import CandidateTower, QueryTower


def in_batch_softmax_loss(
    query: tf.Tensor,
    candidates: tf.Tensor,
    candidate_ids: tf.Tensor,
    sampling_probability: tf.Tensor,
    sample_weight: tf.Tensor,
    temperature: float,
) -> tf.Tensor:
    """tfrs.tasks.Retrieval's loss (remove_accidental_hits=True, logQ, SUM reduction), cheaper.

    The task builds a dense [B, B] identity as labels and a categorical cross
    entropy over it; integer labels give the same value at a fraction of the
    memory traffic, which is most of a training step at batch 4096.
    """
    logits = tf.matmul(query, candidates, transpose_b=True) / temperature
    logits -= tf.math.log(sampling_probability)[None, :]
    batch = tf.shape(logits)[0]
    # Other rows of the batch with the same candidate are not negatives.
    same = tf.equal(candidate_ids[:, None], candidate_ids[None, :])
    accidental = tf.logical_and(same, tf.logical_not(tf.eye(batch, dtype=tf.bool)))
    logits = tf.where(accidental, tf.constant(logits.dtype.min / 10, logits.dtype), logits)
    labels = tf.range(batch)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
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
        self.liked_history = ragged_from_csr(data.history_splits, data.history_values)
        self.candidate_tokens = {name: tf.constant(t) for name, t in data.candidate_tokens_by_anime_index.items()}
        counts = data.item_counts().astype(np.float64)
        self.sampling_probability = tf.constant(np.maximum(counts, 1.0) / counts.sum(), tf.float32)
        self.temperature = temperature

    def candidate_features(self, anime_index: tf.Tensor) -> dict:
        out = {name: tf.gather(tokens, anime_index) for name, tokens in self.candidate_tokens.items()}
        out[f.ANIME_INDEX] = anime_index
        return out

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        user_index, anime_index, weight = inputs
        history = tf.gather(self.liked_history, user_index)
        query = self.query_tower(user_index, history, exclude=anime_index)
        candidates = self.candidate_tower(self.candidate_features(anime_index))
        return in_batch_softmax_loss(
            query, candidates, anime_index, tf.gather(self.sampling_probability, anime_index), weight, self.temperature
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


def streaming_training_dataset(
    file_patterns, feature_spec: dict, liked_rows: int, batch_size: int, shuffle_buffer: int, seed: int = 0
) -> tf.data.Dataset:
    """(user index, anime index, weight) batches of liked rows, streamed from Transform's
    TFRecords, shuffled through a bounded buffer, repeated without end (epochs are
    counted in steps). Nothing but the buffer is held in memory."""
    files, compression = glob_files(file_patterns)
    spec = {name: feature_spec[name] for name in (f.USER_INDEX, f.ANIME_INDEX, f.LIKED, f.WEIGHT)}

    def liked_only(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        keep = tf.equal(tf.reshape(parsed[f.LIKED], [-1]), 1)
        return tuple(
            tf.boolean_mask(tf.reshape(parsed[name], [-1]), keep) for name in (f.USER_INDEX, f.ANIME_INDEX, f.WEIGHT)
        )

    # Files are interleaved in blocks by one reader: parallel readers hand every small
    # record between threads, several times slower. When every liked row fits in the
    # buffer an epoch is exactly one pass over them.
    dataset = (
        tf.data.Dataset.from_tensor_slices(files)
        .shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        .interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
            cycle_length=min(len(files), 8),
            block_length=1024,
        )
        .batch(8192)
        .map(liked_only, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .shuffle(max(1, min(liked_rows, shuffle_buffer)), seed=seed, reshuffle_each_iteration=True)
        .repeat()
    )
    return dataset.batch(min(batch_size, max(1, liked_rows)), drop_remainder=True).prefetch(2)


def training_dataset(data: TrainingData, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """Batches of the liked rows held in `data` (small datasets, tests, benchmarks)."""
    dataset = tf.data.Dataset.from_tensor_slices((data.user_index, data.anime_index, data.weight))
    return (
        dataset.shuffle(min(len(data.user_index), 1_000_000), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=len(data.user_index) > batch_size)
        .prefetch(2)
    )


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
