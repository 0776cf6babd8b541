"""What the Trainer reads from Transform's output, as compact numpy arrays.

Each user's liked history and seen titles, and the transformed catalog.
Histories and seen lists are CSR arrays indexed by the Transform's user index;
one extra empty row serves unknown users. They are model state (the serving
model excludes seen titles and embeds histories), built in one streaming pass
at about 13 bytes per interaction; the training examples themselves are
streamed from the TFRecords (retrieval.streaming_training_dataset).
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
    # Per user index (user_vocab_size + 1 rows, the last one empty).
    user_ids: np.ndarray  # raw user id per index, -1 where unknown
    history_splits: np.ndarray  # liked anime indices
    history_values: np.ndarray
    seen_splits: np.ndarray  # catalog positions of every training row (liked or not)
    seen_values: np.ndarray
    # Liked training rows in memory, for small datasets and tests (the Trainer streams them instead).
    user_index: np.ndarray | None = None
    anime_index: np.ndarray | None = None
    weight: np.ndarray | None = None
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

    @property
    def liked_rows(self) -> int:
        return int(self.history_splits[-1])

    def item_counts(self) -> np.ndarray:
        """Liked training rows per anime index (the histories hold exactly the liked rows)."""
        return np.bincount(self.history_values, minlength=self.anime_vocab_size + 1)

    def likes_by_catalog_position(self) -> np.ndarray:
        """Liked training rows per catalog position (0 for titles nobody liked)."""
        counts = np.zeros(len(self.catalog.anime_id), np.float64)
        known = self.catalog.anime_index < self.anime_vocab_size
        counts[known] = self.item_counts()[self.catalog.anime_index[known]]
        return counts


def dense_parser(feature_spec: dict):
    """tf.io.parse_example, with the variable-length token features padded to TEXT_MAX_TOKENS."""

    def parse(serialized: tf.Tensor) -> dict:
        parsed = tf.io.parse_example(serialized, feature_spec)
        rows = tf.shape(serialized, out_type=tf.int64)[0]
        for name, value in parsed.items():
            if isinstance(value, tf.sparse.SparseTensor):
                shape = tf.stack([rows, f.TEXT_MAX_TOKENS[name]])
                parsed[name] = tf.sparse.to_dense(tf.sparse.reset_shape(value, shape), default_value=f.PAD_TOKEN)
        return parsed

    return parse


def as_patterns(file_patterns) -> list[str]:
    return [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)


def glob_files(file_patterns) -> tuple[list[str], str]:
    """The files matching the patterns, sorted, and their TFRecord compression ("GZIP" or "")."""
    files = sorted(p for pattern in as_patterns(file_patterns) for p in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no example files match {file_patterns}")
    return files, "GZIP" if files[0].endswith(".gz") else ""


def example_batches(file_patterns, feature_spec: dict, batch_size: int = READ_BATCH):
    """Streams (gzipped) TFRecords of tf.Examples as dicts of numpy arrays, batch by batch."""
    files, compression = glob_files(file_patterns)
    # One reader: parallel reads hand every small record between threads, 9x slower here.
    dataset = tf.data.TFRecordDataset(files, compression_type=compression)
    dataset = dataset.batch(batch_size).map(dense_parser(feature_spec), num_parallel_calls=2).prefetch(2)
    return dataset.as_numpy_iterator()


def read_examples(file_patterns, feature_spec: dict) -> dict[str, np.ndarray]:
    """Reads (gzipped) TFRecords of tf.Examples into numpy columns (for small splits)."""
    columns: dict[str, list] = {name: [] for name in feature_spec}
    for batch in example_batches(file_patterns, feature_spec):
        for name, values in batch.items():
            columns[name].append(values)
    return {name: np.concatenate(parts) if parts else np.zeros((0,), dtype=np.int64) for name, parts in columns.items()}


def _csr(rows: np.ndarray, values: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rows, kind="stable")
    splits = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=splits[1:])
    return splits, values[order].astype(np.int64)


CATALOG_COLUMNS = (f.ANIME_ID, f.ANIME_INDEX, f.NAME, f.GENRES, *f.TEXT_MAX_TOKENS)
INTERACTION_COLUMNS = (f.USER_ID, f.USER_INDEX, f.ANIME_ID, f.ANIME_INDEX, f.LIKED)


def catalog_from_columns(columns: dict[str, np.ndarray]) -> Catalog:
    """The transformed catalog split's rows, sorted by raw anime id."""
    flat = {k: v.reshape(len(v), -1) if k in f.TEXT_MAX_TOKENS else v.reshape(-1) for k, v in columns.items()}
    order = np.argsort(flat[f.ANIME_ID], kind="stable")
    return Catalog(
        anime_id=flat[f.ANIME_ID][order],
        anime_index=flat[f.ANIME_INDEX][order],
        titles=flat[f.NAME][order],
        genres=flat[f.GENRES][order],
        tokens={name: flat[name][order] for name in f.TEXT_MAX_TOKENS},
    )


def load_training_data(
    train_patterns,
    catalog_patterns,
    feature_spec: dict,
    user_vocab_size: int,
    anime_vocab_size: int,
    text_vocab_sizes: dict,
) -> TrainingData:
    """The catalog, and histories and seen lists from one streaming pass over the training split.

    Only five narrow columns are read, kept as int32 while streaming: no text,
    and nothing per interaction survives but the CSR tables.
    """
    catalog = catalog_from_columns(read_examples(catalog_patterns, {k: feature_spec[k] for k in CATALOG_COLUMNS}))
    n_users = user_vocab_size + 1  # + the empty row for unknown users
    user_ids = np.full(n_users, -1, dtype=np.int64)
    users, items, positions, liked = [], [], [], []
    for batch in example_batches(train_patterns, {k: feature_spec[k] for k in INTERACTION_COLUMNS}):
        user_index = batch[f.USER_INDEX].reshape(-1)
        user_ids[user_index] = batch[f.USER_ID].reshape(-1)
        users.append(user_index.astype(np.int32))
        items.append(batch[f.ANIME_INDEX].reshape(-1).astype(np.int32))
        positions.append(catalog.positions(batch[f.ANIME_ID].reshape(-1)).astype(np.int32))
        liked.append(batch[f.LIKED].reshape(-1) == 1)
    users, liked = np.concatenate(users), np.concatenate(liked)
    history_splits, history_values = _csr(users[liked], np.concatenate(items)[liked], n_users)
    seen_splits, seen_values = _csr(users, np.concatenate(positions), n_users)
    return TrainingData(
        user_vocab_size=user_vocab_size,
        anime_vocab_size=anime_vocab_size,
        text_vocab_sizes=text_vocab_sizes,
        catalog=catalog,
        user_ids=user_ids,
        history_splits=history_splits,
        history_values=history_values,
        seen_splits=seen_splits,
        seen_values=seen_values,
    )
