"""What the Trainer reads from Transform's output, as compact numpy arrays.

Positives (liked training rows), each user's liked history and seen titles,
and the transformed catalog. Histories and seen lists are CSR arrays indexed by
the Transform's user index; one extra empty row serves unknown users.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from animerec import features as f

READ_BATCH = 65536


@dataclasses.dataclass
class Catalog:
    anime_id: np.ndarray  # sorted raw ids; a catalog position indexes every array here
    anime_index: np.ndarray  # Transform's anime index (anime_vocab_size = out of vocabulary)
    titles: np.ndarray
    genres: np.ndarray
    tokens: dict  # text token feature -> [N, max_tokens]

    def positions(self, anime_id: np.ndarray) -> np.ndarray:
        """Catalog positions of raw anime ids (-1 where absent)."""
        pos = np.searchsorted(self.anime_id, anime_id)
        pos = np.minimum(pos, len(self.anime_id) - 1)
        return np.where(self.anime_id[pos] == anime_id, pos, -1)


@dataclasses.dataclass
class TrainingData:
    user_vocab_size: int
    anime_vocab_size: int
    text_vocab_sizes: dict
    catalog: Catalog
    # Liked training rows.
    user_index: np.ndarray
    anime_index: np.ndarray
    weight: np.ndarray
    # Per user index (user_vocab_size + 1 rows, the last one empty).
    user_ids: np.ndarray  # raw user id per index, -1 where unknown
    history_splits: np.ndarray  # liked anime indices
    history_values: np.ndarray
    seen_splits: np.ndarray  # catalog positions of every training row (liked or not)
    seen_values: np.ndarray
    # Catalog positions held out for eval: seen by the user, so serving excludes them too.
    heldout_splits: np.ndarray | None = None
    heldout_values: np.ndarray | None = None

    def with_heldout(self, user_index: np.ndarray, anime_id: np.ndarray) -> TrainingData:
        """Adds the eval split's rows (raw anime ids by user index) as held-out seen titles."""
        splits, values = _csr(user_index, self.catalog.positions(anime_id), self.user_vocab_size + 1)
        return dataclasses.replace(self, heldout_splits=splits, heldout_values=values)

    @property
    def candidate_tokens_by_anime_index(self) -> dict:
        """Text tokens per anime index, for gathering a batch's candidate features."""
        out = {}
        known = self.catalog.anime_index < self.anime_vocab_size
        for name, tokens in self.catalog.tokens.items():
            table = np.zeros((self.anime_vocab_size + 1, tokens.shape[1]), dtype=np.int64)
            table[self.catalog.anime_index[known]] = tokens[known]
            out[name] = table
        return out

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.anime_index, minlength=self.anime_vocab_size + 1)

    def likes_by_catalog_position(self) -> np.ndarray:
        """Liked training rows per catalog position (0 for titles nobody liked)."""
        counts = np.zeros(len(self.catalog.anime_id), np.float64)
        known = self.catalog.anime_index < self.anime_vocab_size
        counts[known] = self.item_counts()[self.catalog.anime_index[known]]
        return counts


def read_examples(file_patterns, feature_spec: dict) -> dict[str, np.ndarray]:
    """Reads (gzipped) TFRecords of tf.Examples into numpy columns."""
    files = (
        tf.io.gfile.glob(file_patterns)
        if isinstance(file_patterns, str)
        else [p for pattern in file_patterns for p in tf.io.gfile.glob(pattern)]
    )
    if not files:
        raise FileNotFoundError(f"no example files match {file_patterns}")
    compression = "GZIP" if files[0].endswith(".gz") else ""
    dataset = tf.data.TFRecordDataset(sorted(files), compression_type=compression, num_parallel_reads=4)
    dataset = dataset.batch(READ_BATCH).map(lambda x: tf.io.parse_example(x, feature_spec), num_parallel_calls=2)
    columns: dict[str, list] = {name: [] for name in feature_spec}
    for batch in dataset.as_numpy_iterator():
        for name, values in batch.items():
            columns[name].append(values)
    return {name: np.concatenate(parts) if parts else np.zeros((0,), dtype=np.int64) for name, parts in columns.items()}


def _csr(rows: np.ndarray, values: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rows, kind="stable")
    splits = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=splits[1:])
    return splits, values[order].astype(np.int64)


def build_training_data(
    columns: dict[str, np.ndarray], user_vocab_size: int, anime_vocab_size: int, text_vocab_sizes: dict
) -> TrainingData:
    """Splits transformed train+catalog rows into positives, histories and the catalog."""
    squeeze = {
        k: v.reshape(len(v), -1) if v.ndim > 1 and k in f.TEXT_MAX_TOKENS else v.reshape(-1) for k, v in columns.items()
    }
    is_catalog = squeeze[f.USER_ID] == f.NO_USER
    order = np.argsort(squeeze[f.ANIME_ID][is_catalog], kind="stable")
    catalog = Catalog(
        anime_id=squeeze[f.ANIME_ID][is_catalog][order],
        anime_index=squeeze[f.ANIME_INDEX][is_catalog][order],
        titles=squeeze[f.NAME][is_catalog][order],
        genres=squeeze[f.GENRES][is_catalog][order],
        tokens={name: squeeze[name][is_catalog][order] for name in f.TEXT_MAX_TOKENS},
    )
    interactions = ~is_catalog
    user_index = squeeze[f.USER_INDEX][interactions]
    anime_index = squeeze[f.ANIME_INDEX][interactions]
    liked = squeeze[f.LIKED][interactions] == 1
    n_users = user_vocab_size + 1  # + the empty row for unknown users
    user_ids = np.full(n_users, -1, dtype=np.int64)
    user_ids[user_index] = squeeze[f.USER_ID][interactions]
    history_splits, history_values = _csr(user_index[liked], anime_index[liked], n_users)
    seen_positions = catalog.positions(squeeze[f.ANIME_ID][interactions])
    seen_splits, seen_values = _csr(user_index, seen_positions, n_users)
    return TrainingData(
        user_vocab_size=user_vocab_size,
        anime_vocab_size=anime_vocab_size,
        text_vocab_sizes=text_vocab_sizes,
        catalog=catalog,
        user_index=user_index[liked],
        anime_index=anime_index[liked],
        weight=squeeze[f.WEIGHT][interactions][liked].astype(np.float32),
        user_ids=user_ids,
        history_splits=history_splits,
        history_values=history_values,
        seen_splits=seen_splits,
        seen_values=seen_values,
    )
